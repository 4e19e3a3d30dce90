// int4q: the umbrella header. `#include <int4q/quant.hpp>` gives the whole core:
//   config.hpp        quant_config (bits, group, scheme, rounding, data type, scale type)
//   quantize.hpp      quant_tensor, quant_weight_w_scale
//   dequant.hpp       dequant, qdq
//   clip_search.hpp   search_clip (search only; apply with quant_tensor)
//   awq.hpp           AWQ scale search (awq_lite), clip search (awq_clip), awq_full
//   gptq.hpp          gptq (Hessian-aware rounding with error feedback)
//   hessian_loss.hpp  hessian_loss: trace(D^T H D), the output error of a weight error D
//   tuned_rounding.hpp rounding offsets and range factors tuned by signed gradients (AutoRound)
//   pad.hpp, pack.hpp pad/unpad, flat and MatMulNBits packing
//   presets.hpp       ONNX Runtime, GPTQ, ModelOpt, INC grids
//   metrics.hpp       error statistics
#ifndef INT4Q_QUANT_HPP
#define INT4Q_QUANT_HPP

#include <int4q/activation_stats.hpp>
#include <int4q/awq.hpp>
#include <int4q/bits.hpp>
#include <int4q/clip_search.hpp>
#include <int4q/config.hpp>
#include <int4q/dequant.hpp>
#include <int4q/error.hpp>
#include <int4q/float16.hpp>
#include <int4q/gptq.hpp>
#include <int4q/group_params.hpp>
#include <int4q/hessian_loss.hpp>
#include <int4q/metrics.hpp>
#include <int4q/pack.hpp>
#include <int4q/pad.hpp>
#include <int4q/presets.hpp>
#include <int4q/quantize.hpp>
#include <int4q/quantized.hpp>
#include <int4q/tables.hpp>
#include <int4q/tuned_rounding.hpp>
#include <int4q/version.hpp>

#endif  // INT4Q_QUANT_HPP
