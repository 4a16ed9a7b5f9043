/* Emulator stand-in for the CUDA header: everything lives in sy_emu.h. */
#pragma once
#include "sy_emu.h"
