/*
 * A stand-in libcublas.so for the emulator: the GEMMs switchyard calls
 * (cublasGemmEx, cublasGemmStridedBatchedEx), column-major as cuBLAS defines
 * them, with bf16 or fp32 inputs, fp32 output and fp32 accumulation. With
 * beta = 0, C is not read (poisoned outputs stay a valid test).
 */
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

using Status = int;

namespace {

constexpr Status kOk = 0;
constexpr Status kInvalidValue = 7;
constexpr Status kNotSupported = 15;
constexpr int kR32F = 0;
constexpr int kR16BF = 14;

int g_handle_token;

float load(const void* p, int type, long long i) {
    if (type == kR32F) return static_cast<const float*>(p)[i];
    const uint32_t bits = (uint32_t) static_cast<const uint16_t*>(p)[i] << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

Status gemm(int ta, int tb, int m, int n, int k, const float* alpha, const void* a, int atype, int lda,
            long long stride_a, const void* b, int btype, int ldb, long long stride_b, const float* beta, void* c,
            int ctype, int ldc, long long stride_c, int batches) {
    if ((atype != kR32F && atype != kR16BF) || (btype != kR32F && btype != kR16BF) || ctype != kR32F)
        return kNotSupported;
    if (m < 0 || n < 0 || k < 0 || batches < 0) return kInvalidValue;
    /* Column-major C (m x n) = op(A) (m x k) op(B) (k x n): pack op(A)^T as
     * [k][m] and op(B) as [k][n] in f32, then accumulate rank-1 updates over
     * p into a column buffer (contiguous inner loops; f32 sums, as a GPU). */
    std::vector<float> at((size_t)k * m), bt((size_t)k * n), col((size_t)m);
    for (int bi = 0; bi < batches; ++bi) {
        const long long oa = bi * stride_a, ob = bi * stride_b, oc = bi * stride_c;
        for (int p = 0; p < k; ++p)
            for (int i = 0; i < m; ++i)
                at[(size_t)p * m + i] = load(a, atype, oa + (ta ? p + (long long)i * lda : i + (long long)p * lda));
        for (int p = 0; p < k; ++p)
            for (int j = 0; j < n; ++j)
                bt[(size_t)p * n + j] = load(b, btype, ob + (tb ? j + (long long)p * ldb : p + (long long)j * ldb));
        float* cc = static_cast<float*>(c) + oc;
        for (int j = 0; j < n; ++j) {
            std::fill(col.begin(), col.end(), 0.0f);
            for (int p = 0; p < k; ++p) {
                const float bv = bt[(size_t)p * n + j];
                const float* ar = &at[(size_t)p * m];
                for (int i = 0; i < m; ++i) col[(size_t)i] += ar[i] * bv;
            }
            float* out = cc + (long long)j * ldc;
            for (int i = 0; i < m; ++i) out[i] = *alpha * col[(size_t)i] + (*beta == 0.0f ? 0.0f : *beta * out[i]);
        }
    }
    return kOk;
}

}  // namespace

/* The library is built with hidden visibility; these are its exports. */
#pragma GCC visibility push(default)
extern "C" {

Status cublasCreate_v2(void** h) {
    *h = &g_handle_token;
    return kOk;
}
Status cublasDestroy_v2(void*) { return kOk; }
Status cublasSetStream_v2(void*, void*) { return kOk; }
Status cublasSetMathMode(void*, int) { return kOk; }
Status cublasSetWorkspace_v2(void*, void*, size_t) { return kOk; }

Status cublasGemmEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* a, int atype, int lda,
                    const void* b, int btype, int ldb, const void* beta, void* c, int ctype, int ldc, int, int) {
    return gemm(ta, tb, m, n, k, static_cast<const float*>(alpha), a, atype, lda, 0, b, btype, ldb, 0,
                static_cast<const float*>(beta), c, ctype, ldc, 0, 1);
}

Status cublasGemmStridedBatchedEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* a,
                                  int atype, int lda, long long sa, const void* b, int btype, int ldb, long long sb,
                                  const void* beta, void* c, int ctype, int ldc, long long sc, int batches, int, int) {
    return gemm(ta, tb, m, n, k, static_cast<const float*>(alpha), a, atype, lda, sa, b, btype, ldb, sb,
                static_cast<const float*>(beta), c, ctype, ldc, sc, batches);
}

const char* cublasGetStatusString(Status s) { return s == kOk ? "CUBLAS_STATUS_SUCCESS" : "cuBLAS error (emulator)"; }

}  /* extern "C" */
#pragma GCC visibility pop
