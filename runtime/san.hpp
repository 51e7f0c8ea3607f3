// gort: which sanitizer this translation unit is built with, for GCC (__SANITIZE_*__) and
// clang (__has_feature). GORT_ASAN / GORT_TSAN are 1 under AddressSanitizer / ThreadSanitizer.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define GORT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define GORT_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define GORT_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define GORT_TSAN 1
#endif
#endif
