// How to copy: executors for a CopyPlan (copy_plan.h), each returning a completion to poll or wait on.
//
//   host <-> host    memcpy on a small pool of worker threads (a plan under `inline_bytes` is copied on the
//                    calling thread and returned already complete);
//   anything with   the device's own CUDA stream: one cuMemcpyBatchAsync per plan where the driver has it
//   device memory    (CUDA >= 12.8), else a loop of cuMemcpyAsync; an event recorded after the copies is what
//                    the completion polls.
//
// Every call here runs without Python; the bindings release the GIL around submit, poll and wait.
// Lifetime: the caller keeps source and destination memory alive until the completion reports done (the
// bindings hold references); destroying a completion that is not done waits for it first.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cuda/copy_plan.h"
#include "cuda/driver.h"

namespace kvtier {

class Completion {
 public:
  virtual ~Completion() = default;
  // True when every copy has finished. Throws cuda::DriverError if the device reported a failure (on every
  // call after it did).
  virtual bool poll() = 0;
  // Blocks until done, or until `timeout_s` seconds pass (timeout_s < 0: no limit). Returns poll().
  virtual bool wait(double timeout_s) = 0;
};

enum class Path {
  kInline,       // memcpy on the calling thread, complete on return
  kHostThreads,  // memcpy on the worker pool
  kCudaBatched,  // cuMemcpyBatchAsync on the engine's stream
  kCudaLoop,     // cuMemcpyAsync per run on the engine's stream
};
const char* path_name(Path p);

enum class BatchMode {
  kAuto,     // cuMemcpyBatchAsync where the driver has it, else the loop
  kOff,      // always the cuMemcpyAsync loop
  kRequire,  // cuMemcpyBatchAsync or cuda::Unavailable; no fallback
};

struct EngineOptions {
  unsigned threads = 4;                      // host worker threads; 0 copies on the calling thread
  std::uint64_t inline_bytes = 256 * 1024;   // host plans up to this many bytes are copied inline
  BatchMode batch = BatchMode::kAuto;
};

struct CopyStats {
  std::uint64_t submits = 0;
  std::uint64_t inline_submits = 0;
  std::uint64_t host_submits = 0;
  std::uint64_t device_submits = 0;
  std::uint64_t batch_calls = 0;      // cuMemcpyBatchAsync calls that succeeded
  std::uint64_t copy_calls = 0;       // cuMemcpyAsync calls
  std::uint64_t batch_fallbacks = 0;  // batch calls that failed and were redone as a loop
  std::uint64_t runs = 0;             // merged runs submitted
  std::uint64_t bytes = 0;
  std::string last_batch_error;       // why the last batch call failed ("" if none did)
};

class DeviceStream;

// Host worker pool. Tasks are ranges of a plan's runs, split so that each thread gets a similar byte count.
class HostPool {
 public:
  explicit HostPool(unsigned threads);
  ~HostPool();  // finishes every queued task, then joins
  HostPool(const HostPool&) = delete;
  HostPool& operator=(const HostPool&) = delete;

  unsigned threads() const { return static_cast<unsigned>(workers_.size()); }
  // Copies `runs` (`bytes` in all) on the workers. Precondition: threads() > 0.
  std::shared_ptr<Completion> submit(std::vector<Run> runs, std::uint64_t bytes);

 private:
  struct Batch;
  struct Task {
    std::shared_ptr<Batch> batch;
    std::size_t begin;
    std::size_t end;
  };
  void work();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

class CopyEngine {
 public:
  explicit CopyEngine(const EngineOptions& options, cuda::Driver& driver = cuda::driver());
  ~CopyEngine();
  CopyEngine(const CopyEngine&) = delete;
  CopyEngine& operator=(const CopyEngine&) = delete;

  struct Submitted {
    std::shared_ptr<Completion> completion;
    Path path;
  };
  // Starts the plan's copies. `device` is the CUDA ordinal whose stream copies (when either side is device
  // memory), or -1 for host <-> host. Throws cuda::Unavailable when device >= 0 and CUDA cannot be used, and
  // cuda::DriverError when the driver refuses to enqueue a copy (nothing is left in flight then).
  Submitted submit(CopyPlan&& plan, int device);

  CopyStats stats() const;
  const EngineOptions& options() const { return options_; }

 private:
  std::shared_ptr<DeviceStream> stream(int device);

  EngineOptions options_;
  cuda::Driver& driver_;
  HostPool pool_;
  mutable std::mutex mu_;  // guards streams_ and stats_
  std::map<int, std::shared_ptr<DeviceStream>> streams_;
  CopyStats stats_;
};

}  // namespace kvtier
