// The typed error of an option that cannot be honoured, and the check of quantize_options that
// throws it before any work. Messages name the options by their field in quantize_options (or
// auto_options), between backticks, alone (`config.bits`) or with a value (`format = qdq`), so
// that a front end can write its own names for them (the CLI writes its flags: --bits, --format
// qdq).
#ifndef INT4Q_ONNX_OPTION_ERROR_HPP
#define INT4Q_ONNX_OPTION_ERROR_HPP

#include <cstddef>
#include <optional>
#include <string>
#include <utility>

#include <int4q/onnx/model.hpp>
#include <int4q/onnx/quantize_model.hpp>

namespace int4q {
namespace onnx {

/// An option (a field of quantize_options or auto_options) that cannot be honoured. what() is
/// where() followed by message().
class option_error : public model_error {
 public:
  /// `field`: the member at fault as a path ("config.group_size", "overrides[1].match");
  /// `message`: the text, fields in backticks; `override_index`: the entry of
  /// quantize_options::overrides the check was about (its grid, its match), with `where` its
  /// label ("override #1 ('mlp'): ").
  option_error(kind k, std::string field, std::string message,
               std::optional<std::size_t> override_index = std::nullopt, std::string where = "")
      : model_error(k, where + message),
        field_(std::move(field)),
        message_(std::move(message)),
        where_(std::move(where)),
        override_index_(override_index) {}
  const std::string& field() const noexcept { return field_; }
  const std::string& message() const noexcept { return message_; }
  const std::string& where() const noexcept { return where_; }
  const std::optional<std::size_t>& override_index() const noexcept { return override_index_; }

 private:
  std::string field_, message_, where_;
  std::optional<std::size_t> override_index_;
};

/// Throws option_error when `options` cannot be honoured: include, exclude or an override's match
/// is no regular expression (kind invalid); accuracy_level without format matmulnbits or outside
/// 0..4; a grid (the base config, each override that does not skip) the format cannot store or
/// the ort preset cannot reproduce; GPTQ's act_order with groups but without static_groups (the
/// ONNX formats have no g_idx) (kind unsupported). quantize_model and validate_model run the same
/// check first.
void check_quantize_options(const quantize_options& options);

/// Throws option_error(unsupported) when options.format (with options.ort_preset) cannot store
/// the grid `c`: the check check_quantize_options makes of the base config and every override.
void check_format_grid(const int4q::quant_config& c, const quantize_options& options);

}  // namespace onnx
}  // namespace int4q

#endif  // INT4Q_ONNX_OPTION_ERROR_HPP
