/*
 * SIMT runtime of the emulator: runs one kernel launch on the calling OS
 * thread, block after block; the threads of a block are fibers (own stacks,
 * cooperative switches) so that __syncthreads and warp collectives are real
 * rendezvous points, not no-ops.
 *
 * Strictness (each of these aborts the process with the kernel, block and
 * thread named, because each is undefined behaviour on a GPU):
 *   - a barrier that not every live thread of the block reaches (deadlock),
 *   - a warp collective whose mask names a lane that has exited, or lanes of
 *     one warp meeting at collectives of different kinds or masks,
 *   - ldmatrix rows or cp.async addresses that are not 16-byte aligned,
 *   - a segmentation fault (device buffers end at a PROT_NONE page, see
 *     driver.cpp, so reading or writing past the end of one faults).
 * A fiber runs until it blocks, then hands the thread straight to the next
 * ready fiber (first come, first served; the block starts in thread order),
 * so a lane runs far ahead of its warp between collectives: code that relies
 * on implicit warp lockstep (no __syncwarp) reads stale shared memory here,
 * as it may on hardware. mma.sync is computed once per warp, by the last
 * lane to arrive.
 * cp.async copies happen at the issuing thread's cp.async.wait_group, so
 * shared memory read before the wait holds old data. Dynamic shared memory is
 * NaN-filled (0xFF bytes) at the start of every block.
 */
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "include/sy_emu.h"
#include "runtime.h"

/* ---- context switch (x86-64 System V) ------------------------------------ */
/* Saves the callee-saved registers, MXCSR and the x87 control word on the
 * current stack, stores the stack pointer to *from, and resumes `to`. */
extern "C" void sy_emu_switch(void** from, void* to);
asm(R"(
.text
.globl sy_emu_switch
.type sy_emu_switch,@function
sy_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size sy_emu_switch, .-sy_emu_switch
)");

namespace sy_emu {
namespace {

constexpr size_t kStack = 256 * 1024; /* per fiber; a guard page below each */

enum class State { Runnable, WaitBlock, WaitWarp, Done };

struct Copy {
    void* dst;
    const void* src;
    int bytes;
};

struct Fiber {
    void* sp = nullptr;
    char* stack = nullptr; /* mapping base (guard page first) */
    State state = State::Runnable;
    unsigned tid = 0; /* linear thread index in the block */
    dim3 idx;
    unsigned collectives = 0;
    std::vector<std::vector<Copy>> groups; /* committed groups, then the open one */
};

struct Warp {
    int arrived = 0;
    unsigned mask = 0;  /* the pending collective's mask */
    int words = 0;      /* and its width, to catch mismatched collectives */
    unsigned live = 0;  /* lanes not yet exited */
    uint64_t slots[2][32][kSlotWords];
};

struct Block {
    dim3 grid, block, idx;
    std::vector<Fiber> fibers;
    /* Runnable fibers not running now, in the order they became runnable
     * (a ring of fibers.size() entries: each fiber is in it at most once). */
    std::vector<Fiber*> ready;
    size_t head = 0, count = 0;
    std::vector<Warp> warps;
    int live = 0;
    int arrived = 0;
    std::vector<unsigned char> smem;
    const std::function<void()>* body = nullptr;
};

/* Emulation state: one launch at a time (kernels keep block shared memory in
 * function statics), on whichever OS thread launched it. */
std::mutex g_launch;
Block* g_block = nullptr;
Fiber* g_cur = nullptr;
void* g_sched_sp = nullptr;
const char* g_kernel = "";
std::vector<char*> g_stacks; /* reused across launches */

[[noreturn]] void die(const char* fmt, const std::string& detail) {
    std::fprintf(stderr, "sy_emu: kernel %s, block (%u,%u,%u)", g_kernel, g_block ? g_block->idx.x : 0,
                 g_block ? g_block->idx.y : 0, g_block ? g_block->idx.z : 0);
    if (g_cur) std::fprintf(stderr, ", thread %u", g_cur->tid);
    std::fprintf(stderr, ": ");
    std::fprintf(stderr, fmt, detail.c_str());
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    std::abort();
}

void on_segv(int sig, siginfo_t* info, void*) {
    char buf[512];
    int n = std::snprintf(buf, sizeof buf,
                          "sy_emu: signal %d (address %p) in kernel %s, block (%u,%u,%u), thread %u: an access "
                          "outside its buffer (device buffers end at a guard page)\n",
                          sig, info->si_addr, g_kernel, g_block ? g_block->idx.x : 0, g_block ? g_block->idx.y : 0,
                          g_block ? g_block->idx.z : 0, g_cur ? g_cur->tid : 0);
    if (n > 0) (void)!write(2, buf, (size_t)n);
    _exit(134);
}

void install_handler() {
    static bool done = false;
    if (done) return;
    done = true;
    static std::vector<char> alt(1 << 16);
    stack_t ss{};
    ss.ss_sp = alt.data();
    ss.ss_size = alt.size();
    sigaltstack(&ss, nullptr);
    struct sigaction sa {};
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigaction(SIGSEGV, &sa, nullptr);
    sigaction(SIGBUS, &sa, nullptr);
}

void make_ready(Fiber& f) {
    Block& b = *g_block;
    f.state = State::Runnable;
    b.ready[(b.head + b.count) % b.ready.size()] = &f;
    b.count += 1;
}

/* Hand the OS thread from the running fiber to the next ready one, or back to
 * the scheduler when none is ready (the block is done, or deadlocked). The
 * caller has already recorded why it stops (waiting, or done). */
void switch_away() {
    Block& b = *g_block;
    Fiber* from = g_cur;
    if (b.count == 0) {
        sy_emu_switch(&from->sp, g_sched_sp);
        return;
    }
    Fiber* to = b.ready[b.head];
    b.head = (b.head + 1) % b.ready.size();
    b.count -= 1;
    g_cur = to;
    if (to != from) sy_emu_switch(&from->sp, to->sp);
}

void release_warp(Warp& w, int warp) {
    Block& b = *g_block;
    for (unsigned l = 0; l < 32; ++l) {
        const size_t t = (size_t)warp * 32 + l;
        if (t < b.fibers.size() && b.fibers[t].state == State::WaitWarp && &b.fibers[t] != g_cur)
            make_ready(b.fibers[t]);
    }
    g_cur->state = State::Runnable; /* the releasing lane runs on */
    w.arrived = 0;
    w.mask = 0;
    w.words = 0;
}

void release_block() {
    for (Fiber& f : g_block->fibers)
        if (f.state == State::WaitBlock && &f != g_cur) make_ready(f);
    if (g_cur && g_cur->state == State::WaitBlock) g_cur->state = State::Runnable;
    g_block->arrived = 0;
}

[[noreturn]] void fiber_main() {
    (*g_block->body)();
    Block& b = *g_block;
    Fiber& f = *g_cur;
    f.state = State::Done;
    b.live -= 1;
    Warp& w = b.warps[f.tid / 32];
    w.live &= ~(1u << (f.tid % 32));
    if (w.arrived > 0 && (w.mask >> (f.tid % 32)) & 1u)
        die("%s", "exited while its warp waits for it at a collective (divergent __shfl/ldmatrix/mma)");
    if (b.arrived > 0 && b.arrived == b.live) release_block();
    switch_away();
    std::abort(); /* never resumed */
}

extern "C" void sy_emu_trampoline() { fiber_main(); }

void* fresh_stack(char* base) {
    /* Top of the stack, 16-byte aligned, laid out as sy_emu_switch leaves it:
     * [mxcsr | fpucw][r15 r14 r13 r12 rbx rbp][return = trampoline][pad]. */
    uint64_t* top = reinterpret_cast<uint64_t*>(base + kStack + 4096);
    *--top = 0;                                                   /* pad: rsp % 16 == 8 at entry */
    *--top = reinterpret_cast<uint64_t>(&sy_emu_trampoline);      /* ret target */
    for (int i = 0; i < 6; ++i) *--top = 0;                       /* rbp rbx r12 r13 r14 r15 */
    *--top = (uint64_t)0x1F80u | ((uint64_t)0x037Fu << 32);       /* mxcsr, fpu control word */
    return top;
}

char* stack_at(size_t i) {
    while (g_stacks.size() <= i) {
        void* m = mmap(nullptr, kStack + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) die("%s", "cannot map a fiber stack");
        mprotect(m, 4096, PROT_NONE); /* overflow guard */
        g_stacks.push_back(static_cast<char*>(m));
    }
    return g_stacks[i];
}

void run_block(Block& b) {
    const unsigned n = b.block.x * b.block.y * b.block.z;
    b.fibers.assign(n, Fiber{});
    b.warps.assign((n + 31) / 32, Warp{});
    for (size_t w = 0; w < b.warps.size(); ++w) {
        const unsigned lanes = std::min(32u, n - (unsigned)w * 32);
        b.warps[w].live = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
    }
    b.live = (int)n;
    b.arrived = 0;
    std::fill(b.smem.begin(), b.smem.end(), (unsigned char)0xFF);
    for (unsigned t = 0; t < n; ++t) {
        Fiber& f = b.fibers[t];
        f.tid = t;
        f.idx = {t % b.block.x, (t / b.block.x) % b.block.y, t / (b.block.x * b.block.y)};
        f.stack = stack_at(t);
        f.sp = fresh_stack(f.stack);
        f.groups.assign(1, {});
    }
    b.ready.assign(n, nullptr);
    b.head = 0;
    b.count = 0;
    for (Fiber& f : b.fibers) make_ready(f);
    /* Start the first fiber; control comes back when no fiber is ready. */
    g_cur = b.ready[0];
    b.head = 1 % n;
    b.count -= 1;
    sy_emu_switch(&g_sched_sp, g_cur->sp);
    g_cur = nullptr;
    if (b.live != 0) {
        std::string s;
        for (Fiber& f : b.fibers)
            if (f.state != State::Done)
                s += " t" + std::to_string(f.tid) + (f.state == State::WaitBlock ? ":__syncthreads" : ":warp");
        die("deadlock: live threads wait at barriers the others never reach:%s", s);
    }
}

std::map<std::string, Invoker>& registry() {
    static std::map<std::string, Invoker> r;
    return r;
}

}  // namespace

/* ---- what the kernels call ------------------------------------------------ */

dim3 thread_idx() { return g_cur->idx; }
dim3 block_idx() { return g_block->idx; }
dim3 block_dim() { return g_block->block; }
dim3 grid_dim() { return g_block->grid; }
void* dynamic_smem() { return g_block->smem.data(); }

void syncthreads() {
    Block& b = *g_block;
    g_cur->state = State::WaitBlock;
    b.arrived += 1;
    if (b.arrived == b.live) release_block();
    if (g_cur->state != State::Runnable) switch_away();
}

/* The rendezvous of every collective; `complete` (if any) runs once, in the
 * last lane to arrive, on the whole deposit block before anyone reads it. */
static const uint64_t* exchange(unsigned mask, const uint64_t* mine, int words, void (*complete)(uint64_t* slots)) {
    Block& b = *g_block;
    Fiber& f = *g_cur;
    const unsigned lane = f.tid % 32;
    Warp& w = b.warps[f.tid / 32];
    if (!((mask >> lane) & 1u)) die("%s", "calls a warp collective whose mask excludes the caller");
    if (mask & ~w.live) die("%s", "warp collective names lanes that have exited (partial warp)");
    if (w.arrived > 0 && (w.mask != mask || w.words != words))
        die("%s", "lanes of one warp meet at different collectives (divergence)");
    w.mask = mask;
    w.words = words;
    const int p = f.collectives & 1;
    f.collectives += 1;
    for (int i = 0; i < words; ++i) w.slots[p][lane][i] = mine[i];
    w.arrived += 1;
    f.state = State::WaitWarp;
    if (w.arrived == __builtin_popcount(mask)) {
        if (complete) complete(&w.slots[p][0][0]);
        release_warp(w, (int)(f.tid / 32));
    }
    if (f.state != State::Runnable) switch_away();
    /* Lanes outside the mask never deposit; their slots are stale and unread. */
    return &w.slots[p][0][0];
}

const uint64_t* warp_exchange(unsigned mask, const uint64_t* mine, int words) {
    return exchange(mask, mine, words, nullptr);
}

/* mma.sync.m16n8k16 for the whole warp at once: words 0-3 of each lane's slot
 * hold its A registers, 4-5 its B registers, 6-9 its C in and D out (PTX ISA
 * fragment layouts, g = lane / 4, q = lane % 4; products exact, sums in f64,
 * one rounding per output). */
static void mma_complete(uint64_t* slots) {
    auto half = [](uint64_t reg, int hi) { return (double)__uint_as_float(((uint32_t)(reg >> (16 * hi)) & 0xffffu) << 16); };
    double A[16][16], B[16][8];
    for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) {
            const int lane = (r % 8) * 4 + (c % 8) / 2, reg = (r >= 8 ? 1 : 0) + (c >= 8 ? 2 : 0);
            A[r][c] = half(slots[lane * kSlotWords + reg], c % 2);
        }
    for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 8; ++n) {
            const int lane = n * 4 + (k % 8) / 2, reg = k >= 8 ? 1 : 0;
            B[k][n] = half(slots[lane * kSlotWords + 4 + reg], k % 2);
        }
    for (int lane = 0; lane < 32; ++lane) {
        const int g = lane / 4, q = lane % 4;
        for (int i = 0; i < 4; ++i) {
            const int r = g + (i >= 2 ? 8 : 0), n = 2 * q + (i % 2);
            uint64_t& cd = slots[lane * kSlotWords + 6 + i];
            double acc = from_word<float>(cd);
            for (int k = 0; k < 16; ++k) acc += A[r][k] * B[k][n];
            cd = to_word((float)acc);
        }
    }
}

void mma_bf16_16816(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    uint64_t mine[10];
    for (int i = 0; i < 4; ++i) mine[i] = a[i];
    for (int i = 0; i < 2; ++i) mine[4 + i] = b[i];
    for (int i = 0; i < 4; ++i) mine[6 + i] = to_word(d[i]);
    const uint64_t* all = exchange(0xffffffffu, mine, 10, mma_complete);
    const int lane = (int)(g_cur->tid % 32);
    for (int i = 0; i < 4; ++i) d[i] = from_word<float>(all[lane * kSlotWords + 6 + i]);
}

void ldmatrix(uint32_t* r, int count, bool trans, const void* row_addr) {
    const uint64_t mine = reinterpret_cast<uint64_t>(row_addr);
    const uint64_t* all = warp_exchange(0xffffffffu, &mine, 1);
    const int lane = (int)(g_cur->tid % 32);
    for (int m = 0; m < count; ++m)
        for (int j = 0; j < 8; ++j)
            if (all[(m * 8 + j) * kSlotWords] % 16 != 0) die("%s", "ldmatrix row address is not 16-byte aligned");
    const int g = lane / 4, q = lane % 4;
    for (int m = 0; m < count; ++m) {
        uint16_t lo, hi;
        if (!trans) {
            const uint16_t* row = reinterpret_cast<const uint16_t*>(all[(m * 8 + g) * kSlotWords]);
            lo = row[2 * q];
            hi = row[2 * q + 1];
        } else {
            lo = reinterpret_cast<const uint16_t*>(all[(m * 8 + 2 * q) * kSlotWords])[g];
            hi = reinterpret_cast<const uint16_t*>(all[(m * 8 + 2 * q + 1) * kSlotWords])[g];
        }
        r[m] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
}

void cp_async(void* smem, const void* gmem, int src_bytes) {
    if (reinterpret_cast<uintptr_t>(smem) % 16 || reinterpret_cast<uintptr_t>(gmem) % 16)
        die("%s", "cp.async address is not 16-byte aligned");
    g_cur->groups.back().push_back({smem, gmem, src_bytes});
}

void cp_async_commit() { g_cur->groups.emplace_back(); }

void cp_async_wait(int pending) {
    auto& gs = g_cur->groups;
    while ((int)gs.size() - 1 > pending) {
        for (const Copy& c : gs.front()) {
            std::memset(c.dst, 0, 16);
            if (c.bytes > 0) std::memcpy(c.dst, c.src, (size_t)c.bytes);
        }
        gs.erase(gs.begin());
    }
}

/* ---- launches --------------------------------------------------------------- */

void register_kernel(const char* name, Invoker f) { registry()[name] = f; }

Invoker find_kernel(const char* name) {
    auto it = registry().find(name);
    return it == registry().end() ? nullptr : it->second;
}

void launch(const char* name, Invoker f, dim3 grid, dim3 block, unsigned smem, void** args) {
    std::lock_guard<std::mutex> lock(g_launch);
    install_handler();
    static const bool trace = std::getenv("SY_EMU_TRACE") != nullptr;
    if (trace)
        std::fprintf(stderr, "sy_emu: %s grid (%u,%u,%u) block (%u,%u,%u) smem %u\n", name, grid.x, grid.y, grid.z,
                     block.x, block.y, block.z, smem);
    g_kernel = name;
    Block b;
    b.grid = grid;
    b.block = block;
    b.smem.assign(smem, 0xFF);
    const std::function<void()> body = [&] { f(args); };
    b.body = &body;
    g_block = &b;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                b.idx = {x, y, z};
                run_block(b);
            }
    g_block = nullptr;
    g_kernel = "";
}

}  // namespace sy_emu
