/*
 * A stand-in libcuda.so for the emulator: the part of the CUDA driver API
 * that cudarc calls for switchyard, over host memory, with kernel launches
 * run by runtime.cpp. Loaded instead of the real driver through
 * LD_LIBRARY_PATH (tests/emu/build.sh), so the real CUDA backend, launchers
 * and tests run unchanged.
 *
 * One device, "switchyard SIMT emulator (sm_90)". Streams and events exist
 * only as handles: every operation completes before its call returns, so
 * stream order holds trivially. Device pointers are host addresses; each
 * allocation ends 0-15 bytes before a PROT_NONE page, so an access past its
 * end faults and the runtime names the kernel. cuModuleLoadData accepts any
 * image (the fatbins are not executed); cuModuleGetFunction finds kernels by
 * name among those compiled into this library.
 */
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "runtime.h"

using CUresult = int;
using CUdeviceptr = unsigned long long;

namespace {

constexpr CUresult kOk = 0;
constexpr CUresult kInvalidValue = 1;
constexpr CUresult kOutOfMemory = 2;
constexpr CUresult kInvalidHandle = 400;
constexpr CUresult kNotFound = 500;

struct Function {
    std::string name;
    sy_emu::Invoker invoke;
    int max_dynamic_smem = 48 * 1024;
};

struct Event {
    std::chrono::steady_clock::time_point t;
};

struct Mapping {
    void* base;
    size_t bytes;
};

std::mutex g_mem;
std::map<CUdeviceptr, Mapping> g_allocs;
int g_ctx_token, g_module_token;

size_t page() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

CUresult alloc(CUdeviceptr* dptr, size_t bytes) {
    const size_t body = ((bytes == 0 ? 16 : bytes) + 15) / 16 * 16;
    const size_t data_pages = (body + page() - 1) / page();
    const size_t total = (data_pages + 1) * page();
    void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return kOutOfMemory;
    char* guard = static_cast<char*>(m) + data_pages * page();
    mprotect(guard, page(), PROT_NONE);
    const CUdeviceptr p = reinterpret_cast<CUdeviceptr>(guard - body);
    std::lock_guard<std::mutex> lock(g_mem);
    g_allocs[p] = {m, total};
    *dptr = p;
    return kOk;
}

CUresult release(CUdeviceptr p) {
    std::lock_guard<std::mutex> lock(g_mem);
    auto it = g_allocs.find(p);
    if (it == g_allocs.end()) return kInvalidValue;
    munmap(it->second.base, it->second.bytes);
    g_allocs.erase(it);
    return kOk;
}

void* host(CUdeviceptr p) { return reinterpret_cast<void*>(p); }

}  // namespace

/* The library is built with hidden visibility; these are its exports. */
#pragma GCC visibility push(default)
extern "C" {

CUresult cuInit(unsigned) { return kOk; }
CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return kOk;
}
CUresult cuDeviceGetCount(int* n) {
    *n = 1;
    return kOk;
}
CUresult cuDeviceGet(int* dev, int ordinal) {
    if (ordinal != 0) return kInvalidValue;
    *dev = 0;
    return kOk;
}
CUresult cuDeviceGetName(char* name, int len, int) {
    std::snprintf(name, (size_t)len, "switchyard SIMT emulator (sm_90)");
    return kOk;
}
CUresult cuDeviceTotalMem_v2(size_t* bytes, int) {
    *bytes = 16ull << 30;
    return kOk;
}
CUresult cuDeviceGetAttribute(int* v, int attrib, int) {
    switch (attrib) {
        case 1: *v = 1024; break;        /* max threads per block */
        case 2: *v = 1024; break;        /* max block dim x */
        case 3: case 4: *v = 64; break;  /* max block dim y, z */
        case 5: *v = 2147483647; break;  /* max grid dim x */
        case 6: case 7: *v = 65535; break;
        case 8: *v = 48 * 1024; break;   /* shared memory per block */
        case 10: *v = 32; break;         /* warp size */
        case 16: *v = 16; break;         /* multiprocessors */
        case 75: *v = 9; break;          /* compute capability major */
        case 76: *v = 0; break;          /* minor */
        case 81: *v = 228 * 1024; break; /* shared memory per multiprocessor */
        case 97: *v = 227 * 1024; break; /* shared memory per block, opt-in */
        case 115: *v = 0; break;         /* memory pools: no (cudarc then uses cuMemAlloc) */
        default: *v = 0;
    }
    return kOk;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int) {
    *ctx = &g_ctx_token;
    return kOk;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return kOk; }
CUresult cuDevicePrimaryCtxRelease(int) { return kOk; }
CUresult cuCtxSetCurrent(void*) { return kOk; }
CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = &g_ctx_token;
    return kOk;
}
CUresult cuCtxSynchronize() { return kOk; }
CUresult cuCtxGetDevice(int* dev) {
    *dev = 0;
    return kOk;
}

CUresult cuStreamCreate(void** s, unsigned) {
    *s = new int(0);
    return kOk;
}
CUresult cuStreamCreateWithPriority(void** s, unsigned, int) { return cuStreamCreate(s, 0); }
CUresult cuStreamDestroy_v2(void* s) {
    delete static_cast<int*>(s);
    return kOk;
}
CUresult cuStreamSynchronize(void*) { return kOk; }
CUresult cuStreamQuery(void*) { return kOk; }
CUresult cuStreamWaitEvent(void*, void*, unsigned) { return kOk; }

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) { return alloc(p, bytes); }
CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { return alloc(p, bytes); }
CUresult cuMemFree_v2(CUdeviceptr p) { return release(p); }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return release(p); }
CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    *free_bytes = 15ull << 30;
    *total = 16ull << 30;
    return kOk;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    std::memcpy(host(dst), src, n);
    return kOk;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void*) { return cuMemcpyHtoD_v2(dst, src, n); }
CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    std::memcpy(dst, host(src), n);
    return kOk;
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void*) { return cuMemcpyDtoH_v2(dst, src, n); }
CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    std::memmove(host(dst), host(src), n);
    return kOk;
}
CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void*) { return cuMemcpyDtoD_v2(dst, src, n); }
CUresult cuMemsetD8_v2(CUdeviceptr dst, unsigned char v, size_t n) {
    std::memset(host(dst), v, n);
    return kOk;
}
CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(dst, v, n); }
CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned v, size_t n) {
    unsigned* p = static_cast<unsigned*>(host(dst));
    for (size_t i = 0; i < n; ++i) p[i] = v;
    return kOk;
}
CUresult cuMemsetD32Async(CUdeviceptr dst, unsigned v, size_t n, void*) { return cuMemsetD32_v2(dst, v, n); }

CUresult cuModuleLoadData(void** module, const void* image) {
    if (image == nullptr) return kInvalidValue;
    *module = &g_module_token;
    return kOk;
}
CUresult cuModuleUnload(void*) { return kOk; }
CUresult cuModuleGetFunction(void** f, void*, const char* name) {
    sy_emu::Invoker inv = sy_emu::find_kernel(name);
    if (inv == nullptr) return kNotFound;
    *f = new Function{name, inv};
    return kOk;
}
CUresult cuFuncSetAttribute(void* f, int attrib, int value) {
    if (f == nullptr) return kInvalidHandle;
    if (attrib == 8) { /* CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES */
        if (value > 227 * 1024) return kInvalidValue;
        static_cast<Function*>(f)->max_dynamic_smem = value;
    }
    return kOk;
}
CUresult cuFuncGetAttribute(int* v, int, void*) {
    *v = 0;
    return kOk;
}

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned smem, void*, void** params, void** extra) {
    if (f == nullptr) return kInvalidHandle;
    Function& fn = *static_cast<Function*>(f);
    const unsigned long long threads = (unsigned long long)bx * by * bz;
    if (threads == 0 || threads > 1024 || bz > 64 || by > 1024 || gx == 0 || gy == 0 || gz == 0 || gy > 65535 ||
        gz > 65535)
        return kInvalidValue;
    if ((int)smem > fn.max_dynamic_smem) return kInvalidValue; /* the real driver refuses these too */
    if (extra != nullptr || params == nullptr) return kInvalidValue;
    sy_emu::launch(fn.name.c_str(), fn.invoke, {gx, gy, gz}, {bx, by, bz}, smem, params);
    return kOk;
}

CUresult cuEventCreate(void** e, unsigned) {
    *e = new Event{std::chrono::steady_clock::now()};
    return kOk;
}
CUresult cuEventDestroy_v2(void* e) {
    delete static_cast<Event*>(e);
    return kOk;
}
CUresult cuEventRecord(void* e, void*) {
    static_cast<Event*>(e)->t = std::chrono::steady_clock::now();
    return kOk;
}
CUresult cuEventSynchronize(void*) { return kOk; }
CUresult cuEventQuery(void*) { return kOk; }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    *ms = std::chrono::duration<float, std::milli>(static_cast<Event*>(b)->t - static_cast<Event*>(a)->t).count();
    return kOk;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }

CUresult cuGetErrorString(CUresult e, const char** s) {
    switch (e) {
        case kOk: *s = "no error"; break;
        case kInvalidValue: *s = "invalid argument (emulator)"; break;
        case kOutOfMemory: *s = "out of memory (emulator)"; break;
        case kInvalidHandle: *s = "invalid resource handle (emulator)"; break;
        case kNotFound: *s = "named symbol not found (emulator)"; break;
        default: *s = "unknown error (emulator)";
    }
    return kOk;
}
CUresult cuGetErrorName(CUresult e, const char** s) {
    switch (e) {
        case kOk: *s = "CUDA_SUCCESS"; break;
        case kInvalidValue: *s = "CUDA_ERROR_INVALID_VALUE"; break;
        case kOutOfMemory: *s = "CUDA_ERROR_OUT_OF_MEMORY"; break;
        case kInvalidHandle: *s = "CUDA_ERROR_INVALID_HANDLE"; break;
        case kNotFound: *s = "CUDA_ERROR_NOT_FOUND"; break;
        default: *s = "CUDA_ERROR_UNKNOWN";
    }
    return kOk;
}

}  /* extern "C" */
#pragma GCC visibility pop
