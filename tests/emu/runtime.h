/* The emulator's launch interface (runtime.cpp), used by the fake driver. */
#pragma once

#include "include/sy_emu.h"

namespace sy_emu {
/* Runs one thread of a kernel: copies the parameter struct from args[0]. */
using Invoker = void (*)(void** args);
/* Kernel registration, done by the generated per-family files at load time. */
void register_kernel(const char* name, Invoker f);
Invoker find_kernel(const char* name);
/* Runs a whole grid, synchronously, on the calling thread (one launch at a time). */
void launch(const char* name, Invoker f, dim3 grid, dim3 block, unsigned smem, void** args);

/* A kernel taking its parameter struct by value, called from args[0]. */
template <class P>
void call(void (*kernel)(P), void** args) {
    kernel(*static_cast<P*>(args[0]));
}
}  // namespace sy_emu
