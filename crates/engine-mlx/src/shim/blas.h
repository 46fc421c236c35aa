// Which BLAS serves MLX's CPU matmuls, and its thread count (see blas.cc).
#pragma once

#include <string>

namespace mlxe::blas {

// True when OpenBLAS was loaded (the first call loads it, if not yet done).
bool openblas();
// The core OpenBLAS runs ("Cooperlake", "Haswell", ...), or "" when bundled.
std::string core();
// The file of the library serving cblas_sgemm, or "" when unknown.
std::string library();
// Sets OpenBLAS's thread count when n > 0; returns the count in effect (1 bundled).
int threads(int n);

}  // namespace mlxe::blas
