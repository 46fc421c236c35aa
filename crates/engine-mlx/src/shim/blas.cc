// OpenBLAS behind forwarding symbols (x86-64 Linux CPU builds).
//
// libmlx imports a handful of BLAS/LAPACK functions, which the wheel's
// reference BLAS would serve (~8 GFLOP/s on a 1024² f32 matmul). This file
// defines each of them in the binary itself, so the dynamic linker binds
// libmlx's calls here (the executable comes first in the lookup order). The
// first call loads OpenBLAS with dlopen and every later call jumps straight
// to it. Loading it ourselves, instead of linking it, is what lets us choose
// its kernel: OpenBLAS picks its core in a load-time constructor from
// OPENBLAS_CORETYPE or its own cpuid table, and Debian's 0.3.21 does not
// know recent Xeons ("Prescott": 65 GFLOP/s where Cooperlake gives ~300).
// So, unless the user set OPENBLAS_CORETYPE, we pick the core from cpuid,
// set the variable for the constructor and restore the environment after.
//
// Each forwarder is a tiny assembly stub that jumps to the resolved address
// and so passes every argument through untouched, whatever its signature
// (LAPACK's Fortran entry points take hidden string-length arguments that
// differ between compilers). Before resolution it saves the argument
// registers, resolves everything once (std::call_once) and jumps.
//
// If OpenBLAS cannot be loaded, or MLXENGINE_BLAS=bundled is set at run
// time, each symbol resolves to the next definition after this binary: the
// wheel's bundled BLAS/LAPACK that libmlx links.
#include "engine-mlx/src/shim/blas.h"

#if defined(MLXE_OPENBLAS) && defined(__x86_64__) && defined(__linux__)

#include <cpuid.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

// The functions libmlx 0.32.4 imports (`nm -D --undefined-only libmlx.so`).
#define MLXE_BLAS_SYMBOLS(X)                                                                                       \
  X(0, cblas_sgemm)                                                                                                \
  X(1, cblas_dgemm) X(2, cblas_cgemm) X(3, cgeev_) X(4, cgesdd_) X(5, cheevd_) X(6, dgeev_) X(7, dgeqrf_)        \
      X(8, dgesdd_) X(9, dgetrf_) X(10, dgetri_) X(11, dorgqr_) X(12, dpotrf_) X(13, dsyevd_) X(14, dtrtri_)     \
          X(15, sgeev_) X(16, sgeqrf_) X(17, sgesdd_) X(18, sgetrf_) X(19, sgetri_) X(20, sorgqr_)               \
              X(21, spotrf_) X(22, ssyevd_) X(23, strtri_)
constexpr int kSymbols = 24;

extern "C" {
// Read by the stubs; written once under call_once before any stub jumps.
__attribute__((visibility("hidden"))) void* mlxe_blas_targets[kSymbols];
__attribute__((visibility("hidden"))) void mlxe_blas_resolve();
}

#define MLXE_STR(x) #x
#define MLXE_XSTR(x) MLXE_STR(x)
// Fast path: jump to the resolved address. Slow path (null): save the
// integer and vector argument registers and %rax (the vector count of a
// varargs call), resolve, restore, and take the fast path. 7 pushes keep the
// stack 16-byte aligned for the call.
#define MLXE_STUB(i, name)                                 \
  asm(".text\n"                                            \
      ".globl " #name "\n"                                 \
      ".type " #name ",@function\n" #name                  \
      ":\n"                                                \
      "  movq mlxe_blas_targets+8*" #i "(%rip), %r11\n"    \
      "  testq %r11, %r11\n"                               \
      "  jz 1f\n"                                          \
      "  jmp *%r11\n"                                      \
      "1:\n"                                               \
      "  pushq %rdi\n  pushq %rsi\n  pushq %rdx\n"         \
      "  pushq %rcx\n  pushq %r8\n  pushq %r9\n"           \
      "  pushq %rax\n"                                     \
      "  subq $128, %rsp\n"                                \
      "  movdqu %xmm0, 0(%rsp)\n  movdqu %xmm1, 16(%rsp)\n"   \
      "  movdqu %xmm2, 32(%rsp)\n  movdqu %xmm3, 48(%rsp)\n"  \
      "  movdqu %xmm4, 64(%rsp)\n  movdqu %xmm5, 80(%rsp)\n"  \
      "  movdqu %xmm6, 96(%rsp)\n  movdqu %xmm7, 112(%rsp)\n" \
      "  call mlxe_blas_resolve\n"                         \
      "  movdqu 0(%rsp), %xmm0\n  movdqu 16(%rsp), %xmm1\n"   \
      "  movdqu 32(%rsp), %xmm2\n  movdqu 48(%rsp), %xmm3\n"  \
      "  movdqu 64(%rsp), %xmm4\n  movdqu 80(%rsp), %xmm5\n"  \
      "  movdqu 96(%rsp), %xmm6\n  movdqu 112(%rsp), %xmm7\n" \
      "  addq $128, %rsp\n"                                \
      "  popq %rax\n  popq %r9\n  popq %r8\n"              \
      "  popq %rcx\n  popq %rdx\n  popq %rsi\n"            \
      "  popq %rdi\n"                                      \
      "  jmp *mlxe_blas_targets+8*" #i "(%rip)\n"          \
      ".size " #name ", .-" #name "\n");
MLXE_BLAS_SYMBOLS(MLXE_STUB)

namespace {

const char* const kNames[kSymbols] = {
#define MLXE_NAME(i, name) #name,
    MLXE_BLAS_SYMBOLS(MLXE_NAME)
#undef MLXE_NAME
};

struct Loaded {
  void* handle = nullptr;  // OpenBLAS, or null when the bundled BLAS serves
  std::string core;        // what OpenBLAS reports (openblas_get_corename)
  std::string chosen;      // the OPENBLAS_CORETYPE we set, if any
  void (*set_threads)(int) = nullptr;
  int (*get_threads)() = nullptr;
};

Loaded& loaded() {
  static Loaded l;
  return l;
}

uint64_t xcr0() {
  uint32_t lo = 0, hi = 0;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

// The OpenBLAS core for this CPU, or "" to let OpenBLAS decide. Each choice
// needs the instructions its kernels use and the OS saving their registers;
// AMX is never assumed (no OpenBLAS 0.3.21 kernel uses it, and a VM may
// report it without enabling it).
std::string core_for_this_cpu() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return "";
  const unsigned max_leaf = a;
  char vendor[13] = {};
  std::memcpy(vendor, &b, 4);
  std::memcpy(vendor + 4, &d, 4);
  std::memcpy(vendor + 8, &c, 4);
  __get_cpuid(1, &a, &b, &c, &d);
  const unsigned family = ((a >> 8) & 0xf) + (((a >> 8) & 0xf) == 0xf ? ((a >> 20) & 0xff) : 0);
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), avx = c & (1u << 28);
  if (!osxsave || !avx || max_leaf < 7) return "";
  const uint64_t xcr = xcr0();
  const bool ymm_state = (xcr & 0x6) == 0x6, zmm_state = (xcr & 0xe6) == 0xe6;
  unsigned b7 = 0, c7 = 0, d7 = 0, a7 = 0;
  __get_cpuid_count(7, 0, &a7, &b7, &c7, &d7);
  unsigned a71 = 0, b71 = 0, c71 = 0, d71 = 0;
  __get_cpuid_count(7, 1, &a71, &b71, &c71, &d71);
  const bool avx2 = b7 & (1u << 5);
  const bool avx512 = (b7 & (1u << 16)) && (b7 & (1u << 17)) && (b7 & (1u << 28)) && (b7 & (1u << 30)) &&
                      (b7 & (1u << 31));  // F, DQ, CD, BW, VL: SkylakeX's set
  const bool avx512_bf16 = a71 & (1u << 5);
  if (avx512 && zmm_state) return avx512_bf16 ? "Cooperlake" : "SkylakeX";
  if (!(avx2 && fma && ymm_state)) return "";
  const bool amd = std::strcmp(vendor, "AuthenticAMD") == 0 || std::strcmp(vendor, "HygonGenuine") == 0;
  return amd && family >= 0x17 ? "Zen" : "Haswell";
}

void* open_openblas(Loaded& l) {
  const char* pick = std::getenv("MLXENGINE_BLAS");
  if (pick != nullptr && std::strcmp(pick, "bundled") == 0) return nullptr;
  const char* user = std::getenv("OPENBLAS_CORETYPE");
  const bool user_set = user != nullptr && *user != '\0';
  if (!user_set) {
    l.chosen = core_for_this_cpu();
    if (!l.chosen.empty()) setenv("OPENBLAS_CORETYPE", l.chosen.c_str(), 1);
  }
  // The binary's rpath comes first (a `cargo xtask dist` copy ships its own),
  // then the system's. DEEPBIND: OpenBLAS's LAPACK calls its own BLAS, not
  // the reference BLAS libmlx already loaded into the global scope.
  void* h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!user_set && !l.chosen.empty()) unsetenv("OPENBLAS_CORETYPE");
  return h;
}

}  // namespace

extern "C" void mlxe_blas_resolve() {
  static std::once_flag once;
  std::call_once(once, [] {
    Loaded& l = loaded();
    l.handle = open_openblas(l);
    void* targets[kSymbols];
    for (int i = 0; i < kSymbols; i++) {
      void* f = l.handle != nullptr ? dlsym(l.handle, kNames[i]) : nullptr;
      targets[i] = f != nullptr ? f : dlsym(RTLD_NEXT, kNames[i]);
      if (targets[i] == nullptr) {
        std::fprintf(stderr, "engine-mlx: no BLAS/LAPACK library defines %s; reinstall the mlx-cpu wheel\n",
                     kNames[i]);
        std::abort();
      }
    }
    if (l.handle != nullptr) {
      l.set_threads = reinterpret_cast<void (*)(int)>(dlsym(l.handle, "openblas_set_num_threads"));
      l.get_threads = reinterpret_cast<int (*)()>(dlsym(l.handle, "openblas_get_num_threads"));
      if (auto name = reinterpret_cast<const char* (*)()>(dlsym(l.handle, "openblas_get_corename"))) {
        l.core = name();
      }
    }
    // Publish: the stubs read each slot without a lock, after call_once's
    // synchronisation for the thread that resolved; other threads either see
    // null (and wait in call_once) or the final address.
    for (int i = 0; i < kSymbols; i++) __atomic_store_n(&mlxe_blas_targets[i], targets[i], __ATOMIC_RELEASE);
  });
}

namespace mlxe::blas {

bool openblas() {
  mlxe_blas_resolve();
  return loaded().handle != nullptr;
}

std::string core() {
  mlxe_blas_resolve();
  return loaded().core;
}

std::string library() {
  mlxe_blas_resolve();
  Dl_info info{};
  if (dladdr(mlxe_blas_targets[0], &info) != 0 && info.dli_fname != nullptr) return info.dli_fname;
  return "";
}

int threads(int n) {
  mlxe_blas_resolve();
  const Loaded& l = loaded();
  if (l.set_threads != nullptr && n > 0) l.set_threads(n);
  return l.get_threads != nullptr ? l.get_threads() : 1;
}

}  // namespace mlxe::blas

#elif defined(MLXE_OPENBLAS_LINKED)  // other Linux CPUs: OpenBLAS linked ahead of the bundled BLAS

extern "C" void openblas_set_num_threads(int);
extern "C" int openblas_get_num_threads(void);
extern "C" char* openblas_get_corename(void);

// A dynamic initializer lives in .init_array, which --gc-sections keeps; its
// reference makes the linker keep libopenblas as a direct dependency under
// --as-needed, so OpenBLAS's cblas_sgemm wins over the wheel's reference BLAS.
static const int mlxe_openblas_threads_at_start = openblas_get_num_threads();

namespace mlxe::blas {
bool openblas() { return true; }
std::string core() { return openblas_get_corename(); }
std::string library() { return ""; }
int threads(int n) {
  if (n > 0) openblas_set_num_threads(n);
  return openblas_get_num_threads();
}
}  // namespace mlxe::blas

#else  // the wheel's bundled BLAS serves libmlx directly

namespace mlxe::blas {
bool openblas() { return false; }
std::string core() { return ""; }
std::string library() { return ""; }
int threads(int) { return 1; }
}  // namespace mlxe::blas

#endif
