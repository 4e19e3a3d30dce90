// INT4Q_TEST_ASAN: defined when the tests are built with AddressSanitizer (scripts/test's second
// build). Memory measurements mean little there: ASan keeps freed blocks in its quarantine and
// adds shadow memory, so tests of peak memory skip themselves.
#ifndef INT4Q_TESTS_ONNX_SANITIZER_HPP
#define INT4Q_TESTS_ONNX_SANITIZER_HPP

#if defined(__SANITIZE_ADDRESS__)
#define INT4Q_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define INT4Q_TEST_ASAN 1
#endif
#endif

#endif  // INT4Q_TESTS_ONNX_SANITIZER_HPP
