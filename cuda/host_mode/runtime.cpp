// Host execution mode: the emulated CUDA runtime (include/redknot/cuda/host_mode/runtime.hpp) and the CTA
// scheduler that runs kernels with every CUDA thread as a fiber (cuda/host_mode/device.hpp).
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "device.hpp"
#include "redknot/error.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define REDKNOT_HOST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define REDKNOT_HOST_ASAN 1
#endif
#endif
#if defined(REDKNOT_HOST_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#error "the CUDA host execution mode switches fibers with x86-64 code (add a context switch for this target)"
#endif

// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores the stack
// pointer in *save, loads `load` and restores the same from there (System V x86-64).
extern "C" void redknot_fiber_switch(void** save, void* load);
asm(R"(
  .text
  .globl redknot_fiber_switch
  .type redknot_fiber_switch, @function
redknot_fiber_switch:
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
  .size redknot_fiber_switch, .-redknot_fiber_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");

namespace redknot::cuda::host {
namespace {

// ---- errors and the "device"
// ---------------------------------------------------------------------------------------

thread_local cudaError_t t_last_error = cudaSuccess;
std::mutex g_mu;                 // allocations and captures
std::set<const void*> g_allocs;  // live cudaMalloc pointers

struct Capture;
std::vector<Capture*> g_captures;  // active stream captures (g_mu)

cudaError_t fail(cudaError_t e) {
  t_last_error = e;
  return e;
}

}  // namespace
}  // namespace redknot::cuda::host

struct CUgraph_st {
  std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};

namespace redknot::cuda::host {
namespace {
struct Capture {
  CUstream_st* stream;
  cudaStreamCaptureMode mode;
  std::thread::id thread;
  std::unique_ptr<CUgraph_st> graph = std::make_unique<CUgraph_st>();
  bool invalidated = false;
};
}  // namespace
}  // namespace redknot::cuda::host

struct CUstream_st {
  redknot::cuda::host::Capture* capture = nullptr;  // g_mu
};

namespace redknot::cuda::host {
namespace {

// A call that a capture in progress forbids (allocation, synchronous copies, synchronisation): true, and the
// captures it breaks are invalidated, when one is in progress that covers this thread.
bool capture_forbids() {
  const std::lock_guard lock(g_mu);
  bool hit = false;
  for (Capture* c : g_captures)
    if (c->mode == cudaStreamCaptureModeGlobal ||
        (c->mode == cudaStreamCaptureModeThreadLocal && c->thread == std::this_thread::get_id())) {
      c->invalidated = true;
      hit = true;
    }
  return hit;
}

// ---- fibers and the CTA scheduler
// ----------------------------------------------------------------------------------

constexpr std::size_t kStackBytes = std::size_t{256} << 10;
constexpr std::size_t kGuardBytes = 4096;
constexpr int kSlotBytes = 64;

struct Stack {
  void* base = nullptr;  // mmap'ed, lowest page a guard
  Stack() {
    base = ::mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw std::bad_alloc();
    ::mprotect(base, kGuardBytes, PROT_NONE);  // an overflow faults instead of corrupting memory
  }
  ~Stack() { ::munmap(base, kStackBytes); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  char* top() const { return static_cast<char*>(base) + kStackBytes; }
};

struct CpCopy {
  void* dst;
  const void* src;
  int src_bytes;
};

enum class FiberState { kRunnable, kAtBarrier, kAtWarp, kDone };

struct Fiber {
  void* sp = nullptr;
  std::unique_ptr<Stack> stack;
  ThreadCtx ctx;
  int tid = 0, warp = 0, lane = 0;
  FiberState state = FiberState::kRunnable;
  std::vector<CpCopy> open;                 // cp.async copies not yet committed
  std::vector<std::vector<CpCopy>> groups;  // committed, oldest first
#if defined(REDKNOT_HOST_ASAN)
  void* fake_stack = nullptr;
#endif
};

struct Warp {
  int size = 0, live = 0, arrived = 0;
  std::size_t bytes[32] = {};
  alignas(16) unsigned char slots[2][32][kSlotBytes];
};

struct Cta {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int live = 0, at_barrier = 0;
  void* sched_sp = nullptr;
  Fiber* current = nullptr;
  const std::function<void()>* kernel = nullptr;
  std::exception_ptr error;
  std::vector<uint4> smem;  // dynamic shared memory, 16-byte aligned
  std::size_t smem_bytes = 0;
  std::vector<int> parity;  // per thread: which slot buffer its next warp collective uses
  bool eager_copies = false;
  std::uint64_t ctas_run = 0;  // on this OS thread, all launches: picks each CTA's schedule
#if defined(REDKNOT_HOST_ASAN)
  const void* sched_stack_bottom = nullptr;
  std::size_t sched_stack_size = 0;
#endif
};

thread_local Cta* t_cta = nullptr;

[[noreturn]] void kernel_error(const std::string& what) { throw std::runtime_error(what); }

// fiber -> scheduler
void yield_to_scheduler(Fiber& f, bool exiting) {
  Cta& c = *t_cta;
#if defined(REDKNOT_HOST_ASAN)
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.fake_stack, c.sched_stack_bottom, c.sched_stack_size);
#else
  (void)exiting;
#endif
  redknot_fiber_switch(&f.sp, c.sched_sp);
#if defined(REDKNOT_HOST_ASAN)
  __sanitizer_finish_switch_fiber(f.fake_stack, &c.sched_stack_bottom, &c.sched_stack_size);
#endif
}

void release_barrier(Cta& c) {
  for (Fiber& f : c.fibers)
    if (f.state == FiberState::kAtBarrier) f.state = FiberState::kRunnable;
  c.at_barrier = 0;
}

// A thread leaves: barriers now wait for one thread fewer.
void on_exit(Cta& c, Fiber& f) {
  --c.live;
  --c.warps[static_cast<std::size_t>(f.warp)].live;
  if (c.at_barrier > 0 && c.at_barrier == c.live) release_barrier(c);
}

[[noreturn]] void redknot_fiber_main() {
  Cta& c = *t_cta;
  Fiber& f = *c.current;
#if defined(REDKNOT_HOST_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &c.sched_stack_bottom, &c.sched_stack_size);
#endif
  try {
    (*c.kernel)();
  } catch (...) {
    if (!c.error) c.error = std::current_exception();
  }
  f.state = FiberState::kDone;
  on_exit(c, f);
  yield_to_scheduler(f, true);
  std::abort();  // a finished fiber is never resumed
}

// The initial stack of a fiber: what redknot_fiber_switch pops (MXCSR and x87 control word at their reset
// values, six zeroed registers), then redknot_fiber_main as the return address and a null return address
// above it, where unwinders stop.
void* initial_stack(Stack& s) {
#if defined(REDKNOT_HOST_ASAN)
  // A stack is reused by the next CTA: the redzones of the frames its last fiber left there are stale. Kernel
  // frames stay in the top 64 KiB (ASan moves large locals to its fake stack).
  constexpr std::size_t kUsed = std::size_t{64} << 10;
  __asan_unpoison_memory_region(s.top() - kUsed, kUsed);
#endif
  auto* top =
      reinterpret_cast<std::uint64_t*>(reinterpret_cast<std::uintptr_t>(s.top()) & ~std::uintptr_t{15});
  std::uint64_t* sp = top - 2;  // 16-byte aligned: the slot of redknot_fiber_main's address
  sp[1] = 0;
  sp[0] = reinterpret_cast<std::uint64_t>(&redknot_fiber_main);
  sp -= 6;
  std::fill(sp, sp + 6, 0);
  sp -= 1;
  const std::uint32_t mxcsr = 0x1f80, fpucw = 0x037f;
  std::memcpy(sp, &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpucw, 4);
  return sp;
}

void perform(const std::vector<CpCopy>& group) {
  for (const CpCopy& k : group) {
    if (k.src_bytes > 0) std::memcpy(k.dst, k.src, static_cast<std::size_t>(k.src_bytes));
    std::memset(static_cast<char*>(k.dst) + k.src_bytes, 0, static_cast<std::size_t>(16 - k.src_bytes));
  }
}

std::string dim_text(uint3 d) {
  return std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z);
}

// Runs one CTA to completion under one of four schedules, taken in turn by the CTAs an OS thread runs:
// threads in ascending or descending order of threadIdx (a race on shared memory without a barrier shows in
// one of the two orders), cp.async copies done at their wait or at once (a read before the wait, or an
// overwrite of data other threads still read, shows in one of the two).
void run_cta(Cta& c, uint3 grid, uint3 block, uint3 idx) {
  const bool reverse = (c.ctas_run & 1) != 0;
  c.eager_copies = (c.ctas_run & 2) != 0;
  ++c.ctas_run;
  const int n = static_cast<int>(block.x * block.y * block.z);
  if (c.fibers.size() < static_cast<std::size_t>(n)) c.fibers.resize(static_cast<std::size_t>(n));
  const int nwarps = (n + 31) / 32;
  c.warps.assign(static_cast<std::size_t>(nwarps), Warp{});
  c.parity.assign(static_cast<std::size_t>(n), 0);
  for (int w = 0; w < nwarps; ++w) {
    c.warps[static_cast<std::size_t>(w)].size = std::min(32, n - 32 * w);
    c.warps[static_cast<std::size_t>(w)].live = c.warps[static_cast<std::size_t>(w)].size;
  }
  c.live = n;
  c.at_barrier = 0;
  c.error = nullptr;
  if (c.smem_bytes > 0) std::memset(c.smem.data(), 0xff, c.smem_bytes);  // NaN for unwritten reads
  for (int t = 0; t < n; ++t) {
    Fiber& f = c.fibers[static_cast<std::size_t>(t)];
    if (!f.stack) f.stack = std::make_unique<Stack>();
    f.tid = t;
    f.warp = t / 32;
    f.lane = t % 32;
    f.state = FiberState::kRunnable;
    f.open.clear();
    f.groups.clear();
    const unsigned ut = static_cast<unsigned>(t);
    f.ctx = ThreadCtx{{ut % block.x, (ut / block.x) % block.y, ut / (block.x * block.y)}, idx, block, grid};
    f.sp = initial_stack(*f.stack);
  }
  while (c.live > 0 && !c.error) {
    bool ran = false;
    for (int i = 0; i < n && !c.error; ++i) {
      Fiber& f = c.fibers[static_cast<std::size_t>(reverse ? n - 1 - i : i)];
      if (f.state != FiberState::kRunnable) continue;
      ran = true;
      c.current = &f;
#if defined(REDKNOT_HOST_ASAN)
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, f.stack->base, kStackBytes);
#endif
      redknot_fiber_switch(&c.sched_sp, f.sp);
#if defined(REDKNOT_HOST_ASAN)
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
    }
    if (!ran && !c.error) {
      int at_barrier = 0, at_warp = 0;
      for (int t = 0; t < n; ++t) {
        at_barrier += c.fibers[static_cast<std::size_t>(t)].state == FiberState::kAtBarrier;
        at_warp += c.fibers[static_cast<std::size_t>(t)].state == FiberState::kAtWarp;
      }
      kernel_error("deadlock in CTA (" + dim_text(idx) + "): " + std::to_string(at_barrier) +
                   " threads wait at __syncthreads, " + std::to_string(at_warp) + " at warp collectives, " +
                   std::to_string(n - c.live) + " exited");
    }
  }
  if (c.error) std::rethrow_exception(c.error);  // the CTA's other fibers are abandoned where they wait
}

}  // namespace

// ---- device-side API
// ----------------------------------------------------------------------------------------------

const ThreadCtx& cur() {
  if (t_cta == nullptr || t_cta->current == nullptr)
    throw std::logic_error("CUDA host mode: device code called outside a kernel launch");
  return t_cta->current->ctx;
}

int lane_id() { return t_cta->current->lane; }

void sync_block() {
  Cta& c = *t_cta;
  Fiber& f = *c.current;
  if (++c.at_barrier == c.live) {
    release_barrier(c);
    return;
  }
  f.state = FiberState::kAtBarrier;
  yield_to_scheduler(f, false);
}

void warp_all_gather(unsigned mask, const void* mine, std::size_t bytes, void* all) {
  Cta& c = *t_cta;
  Fiber& f = *c.current;
  Warp& w = c.warps[static_cast<std::size_t>(f.warp)];
  if (mask != 0xffffffffu || w.size != 32)
    kernel_error("warp collective with mask " + std::to_string(mask) + " in a warp of " +
                 std::to_string(w.size) + " threads: only full warps are emulated");
  if (w.live != 32)
    kernel_error("warp collective in warp " + std::to_string(f.warp) + " after " +
                 std::to_string(32 - w.live) + " of its lanes exited");
  if (bytes > static_cast<std::size_t>(kSlotBytes)) kernel_error("warp collective operand too large");
  const int p = c.parity[static_cast<std::size_t>(f.tid)];
  c.parity[static_cast<std::size_t>(f.tid)] ^= 1;
  std::memcpy(w.slots[p][f.lane], mine, bytes);
  w.bytes[f.lane] = bytes;
  if (++w.arrived == 32) {
    for (int l = 0; l < 32; ++l)
      if (w.bytes[l] != bytes)
        kernel_error("lanes of warp " + std::to_string(f.warp) + " meet in different warp collectives");
    w.arrived = 0;
    for (int l = 0; l < 32; ++l) {
      Fiber& o = c.fibers[static_cast<std::size_t>(f.warp * 32 + l)];
      if (o.state == FiberState::kAtWarp) o.state = FiberState::kRunnable;
    }
  } else {
    f.state = FiberState::kAtWarp;
    yield_to_scheduler(f, false);
  }
  for (int l = 0; l < 32; ++l) std::memcpy(static_cast<char*>(all) + l * bytes, w.slots[p][l], bytes);
}

unsigned char* dynamic_smem() { return reinterpret_cast<unsigned char*>(t_cta->smem.data()); }

void cp_async(void* dst, const void* src, int src_bytes) {
  if (src_bytes < 0 || src_bytes > 16) kernel_error("cp.async with src_bytes " + std::to_string(src_bytes));
  const CpCopy k{dst, src, src_bytes};
  if (t_cta->eager_copies)
    perform({k});  // the earliest legal completion: shows a copy that overwrites what others still read
  else
    t_cta->current->open.push_back(k);  // the latest (at its wait): shows a read before the wait
}
void cp_async_commit() {
  Fiber& f = *t_cta->current;
  f.groups.push_back(std::move(f.open));
  f.open.clear();
}
void cp_async_wait(int n) {
  Fiber& f = *t_cta->current;
  while (static_cast<int>(f.groups.size()) > n) {
    perform(f.groups.front());
    f.groups.erase(f.groups.begin());
  }
}

void run_grid(uint3 grid, uint3 block, std::size_t smem, const std::function<void()>& kernel) {
  if (t_cta != nullptr) throw std::logic_error("CUDA host mode: a kernel launched from device code");
  const unsigned threads = block.x * block.y * block.z;
  if (threads == 0 || threads > 1024 || grid.x == 0)
    throw std::invalid_argument("launch with grid (" + dim_text(grid) + ") and block (" + dim_text(block) +
                                ")");
  thread_local Cta cta;  // fibers and stacks reused across launches
  cta.kernel = &kernel;
  cta.smem_bytes = smem;
  if (cta.smem.size() * 16 < smem) cta.smem.resize((smem + 15) / 16);
  t_cta = &cta;
  struct Reset {
    ~Reset() {
      t_cta->current = nullptr;
      t_cta = nullptr;
    }
  } reset;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) run_cta(cta, grid, block, uint3{x, y, z});
}

void Launch::enqueue(std::function<void()> kernel_once) const {
  const uint3 grid = grid_, block = block_;
  const std::size_t smem = smem_;
  const cudaError_t e = host::enqueue(stream_, [grid, block, smem, k = std::move(kernel_once)] {
    try {
      run_grid(grid, block, smem, k);
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "redknot CUDA host mode: kernel launch failed: %s\n", ex.what());
      set_launch_error(cudaErrorLaunchFailure);
    }
  });
  if (e != cudaSuccess) set_launch_error(e);
}

// ---- streams
// -------------------------------------------------------------------------------------------------------

cudaError_t enqueue(cudaStream_t stream, std::function<void()> op) {
  {
    const std::lock_guard lock(g_mu);
    if (stream != nullptr && stream->capture != nullptr) {
      stream->capture->graph->ops.push_back(std::move(op));
      return cudaSuccess;
    }
  }
  op();
  return cudaSuccess;
}

void set_launch_error(cudaError_t e) { t_last_error = e; }

}  // namespace redknot::cuda::host

// ---- the runtime API
// -----------------------------------------------------------------------------------------------------
using redknot::cuda::host::capture_forbids;
using redknot::cuda::host::fail;
using redknot::cuda::host::g_allocs;
using redknot::cuda::host::g_captures;
using redknot::cuda::host::g_mu;
using redknot::cuda::host::t_last_error;

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInsufficientDriver:
      return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorNoDevice:
      return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure (CUDA host mode: see the message on stderr)";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last_error;
  t_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return t_last_error; }

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : fail(cudaErrorInvalidDevice); }

// The SM count decides how finely decode is split: REDKNOT_HOST_SMS (default 4) to exercise other splits.
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  if (attr != cudaDevAttrMultiProcessorCount) return fail(cudaErrorInvalidValue);
  const char* e = std::getenv("REDKNOT_HOST_SMS");
  *value = e != nullptr && std::atoi(e) > 0 ? std::atoi(e) : 4;
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  return capture_forbids() ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

cudaError_t cudaMalloc(void** p, std::size_t bytes) {
  if (capture_forbids()) return fail(cudaErrorStreamCaptureUnsupported);
  const std::size_t n = std::max<std::size_t>((bytes + 255) & ~std::size_t{255}, 256);
  void* q = std::aligned_alloc(256, n);
  if (q == nullptr) return fail(cudaErrorMemoryAllocation);
  // Uninitialised device memory: NaN bytes, so a read of what no one wrote shows (up to 64 MiB).
  std::memset(q, 0xff, std::min<std::size_t>(n, std::size_t{64} << 20));
  const std::lock_guard lock(g_mu);
  g_allocs.insert(q);
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (p == nullptr) return cudaSuccess;
  if (capture_forbids()) return fail(cudaErrorStreamCaptureUnsupported);
  {
    const std::lock_guard lock(g_mu);
    if (g_allocs.erase(p) == 0) return fail(cudaErrorInvalidValue);
  }
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind) {
  if (capture_forbids()) return fail(cudaErrorStreamCaptureImplicit);
  if (bytes > 0) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind,
                            cudaStream_t stream) {
  return redknot::cuda::host::enqueue(stream, [=] {
    if (bytes > 0) std::memmove(dst, src, bytes);
  });
}
cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t stream) {
  return redknot::cuda::host::enqueue(stream, [=] { std::memset(dst, value, bytes); });
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned) {
  *stream = new CUstream_st;
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return fail(cudaErrorInvalidResourceHandle);
  const std::lock_guard lock(g_mu);
  if (stream->capture != nullptr) return fail(cudaErrorStreamCaptureUnsupported);
  delete stream;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  {
    const std::lock_guard lock(g_mu);
    if (stream != nullptr && stream->capture != nullptr) {
      stream->capture->invalidated = true;
      return fail(cudaErrorStreamCaptureUnsupported);
    }
  }
  return capture_forbids() ? fail(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode mode) {
  if (stream == nullptr) return fail(cudaErrorStreamCaptureUnsupported);  // the legacy stream
  const std::lock_guard lock(g_mu);
  if (stream->capture != nullptr) return fail(cudaErrorStreamCaptureUnsupported);
  auto* c = new redknot::cuda::host::Capture{stream, mode, std::this_thread::get_id()};
  stream->capture = c;
  g_captures.push_back(c);
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  std::unique_ptr<redknot::cuda::host::Capture> c;
  {
    const std::lock_guard lock(g_mu);
    if (stream == nullptr || stream->capture == nullptr) return fail(cudaErrorInvalidValue);
    c.reset(stream->capture);
    stream->capture = nullptr;
    g_captures.erase(std::find(g_captures.begin(), g_captures.end(), c.get()));
  }
  if (c->invalidated) {
    *graph = nullptr;
    return fail(cudaErrorStreamCaptureInvalidated);
  }
  *graph = c->graph.release();
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (graph == nullptr) return fail(cudaErrorInvalidValue);
  *exec = new CUgraphExec_st{graph->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return fail(cudaErrorInvalidValue);
  for (const auto& op : exec->ops) {
    const cudaError_t e = redknot::cuda::host::enqueue(stream, op);
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete graph;
  return cudaSuccess;
}
