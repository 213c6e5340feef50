#include "cuda/copy_engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "core/common.h"

namespace kvtier {

const char* path_name(Path p) {
  switch (p) {
    case Path::kInline: return "inline";
    case Path::kHostThreads: return "host-threads";
    case Path::kCudaBatched: return "cuda-batched";
    case Path::kCudaLoop: return "cuda-loop";
  }
  return "?";
}

namespace {

constexpr std::uint64_t kMinTaskBytes = 256 * 1024;  // below this a thread hand-off costs more than it saves
constexpr std::size_t kMaxBatch = std::size_t{1} << 15;  // copies per cuMemcpyBatchAsync call

void copy_runs(const Run* runs, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    std::memcpy(reinterpret_cast<void*>(runs[i].dst), reinterpret_cast<const void*>(runs[i].src), runs[i].bytes);
}

class Done final : public Completion {
 public:
  bool poll() override { return true; }
  bool wait(double) override { return true; }
};

}  // namespace

// ------------------------------------------------------------------------------------------ host pool
struct HostPool::Batch final : Completion {
  std::vector<Run> runs;
  std::atomic<std::size_t> pending{0};  // tasks not finished
  std::mutex mu;
  std::condition_variable cv;

  bool poll() override { return pending.load(std::memory_order_acquire) == 0; }
  bool wait(double timeout_s) override {
    if (poll()) return true;
    std::unique_lock<std::mutex> lock(mu);
    if (timeout_s < 0)
      cv.wait(lock, [&] { return poll(); });
    else
      cv.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return poll(); });
    return poll();
  }
};

HostPool::HostPool(unsigned threads) {
  workers_.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) workers_.emplace_back([this] { work(); });
}

HostPool::~HostPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

void HostPool::work() {
  for (;;) {
    Task task;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and drained
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    copy_runs(task.batch->runs.data() + task.begin, task.end - task.begin);
    if (task.batch->pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(task.batch->mu);
      task.batch->cv.notify_all();
    }
  }
}

std::shared_ptr<Completion> HostPool::submit(std::vector<Run> runs, std::uint64_t bytes) {
  KVTIER_ASSERT(!workers_.empty());
  const std::uint64_t t = workers_.size();
  // About two tasks per thread (so one slow thread does not hold the batch), none under kMinTaskBytes.
  const std::uint64_t target = std::max(kMinTaskBytes, (bytes + 2 * t - 1) / (2 * t));
  auto batch = std::make_shared<Batch>();
  batch->runs.reserve(runs.size() + bytes / target + 1);
  for (const Run& r : runs) {  // split runs longer than a task
    for (std::uint64_t off = 0; off < r.bytes; off += target)
      batch->runs.push_back(Run{r.dst + off, r.src + off, std::min(target, r.bytes - off)});
  }
  std::vector<Task> tasks;
  std::size_t begin = 0;
  std::uint64_t acc = 0;
  for (std::size_t i = 0; i < batch->runs.size(); ++i) {
    acc += batch->runs[i].bytes;
    if (acc >= target || i + 1 == batch->runs.size()) {
      tasks.push_back(Task{batch, begin, i + 1});
      begin = i + 1;
      acc = 0;
    }
  }
  batch->pending.store(tasks.size(), std::memory_order_release);
  if (tasks.empty()) return batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (Task& task : tasks) queue_.push_back(std::move(task));
  }
  if (tasks.size() == 1)
    cv_.notify_one();
  else
    cv_.notify_all();
  return batch;
}

// ------------------------------------------------------------------------------------------ device stream
// One CUDA stream on one device's primary context. Submissions are serialised (stream order = submit order).
class DeviceStream {
 public:
  DeviceStream(cuda::Driver& d, int device, BatchMode mode)
      : driver(d), ctx(d.primary_context(device)), batch_(mode != BatchMode::kOff && d.has_batch()), mode_(mode) {
    if (mode == BatchMode::kRequire && !d.has_batch())
      throw cuda::Unavailable("batched copies were required, but this CUDA driver (version " +
                              std::to_string(d.version()) + ") has no cuMemcpyBatchAsync; it needs CUDA 12.8 or newer");
    cuda::ContextGuard guard(driver, ctx);
    driver.check(driver.api().stream_create(&stream_, cuda::CU_STREAM_NON_BLOCKING), "cuStreamCreate");
  }
  ~DeviceStream() {
    if (!driver.available()) return;  // a forked child: the stream belongs to the parent's CUDA state
    try {
      cuda::ContextGuard guard(driver, ctx);
      driver.api().stream_synchronize(stream_);
      driver.api().stream_destroy(stream_);
    } catch (...) {
    }
  }
  DeviceStream(const DeviceStream&) = delete;
  DeviceStream& operator=(const DeviceStream&) = delete;

  struct Result {
    std::shared_ptr<Completion> completion;
    Path path = Path::kCudaLoop;
    std::uint64_t batch_calls = 0;
    std::uint64_t copy_calls = 0;
    std::uint64_t fallbacks = 0;
    std::string batch_error;
  };
  Result submit(const std::vector<Run>& runs, const std::shared_ptr<DeviceStream>& self);

  cuda::Driver& driver;
  const cuda::CUcontext ctx;

 private:
  // Waits for everything enqueued so far (so no copy outlives the error), then throws.
  [[noreturn]] void fail(cuda::CUresult r, const std::string& what) {
    driver.api().stream_synchronize(stream_);
    throw cuda::DriverError(r, what + " failed: " + driver.describe(r));
  }

  std::mutex mu_;
  cuda::CUstream stream_ = nullptr;
  bool batch_;
  BatchMode mode_;
};

namespace {

// Completion of device copies: an event recorded on the stream after them.
class EventCompletion final : public Completion {
 public:
  EventCompletion(std::shared_ptr<DeviceStream> stream, cuda::CUevent event)
      : stream_(std::move(stream)), event_(event) {}
  ~EventCompletion() override {
    if (!stream_->driver.available()) return;
    try {
      cuda::ContextGuard guard(stream_->driver, stream_->ctx);
      if (state_ == kPending) stream_->driver.api().event_synchronize(event_);
      stream_->driver.api().event_destroy(event_);
    } catch (...) {
    }
  }

  bool poll() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == kPending) {
      cuda::ContextGuard guard(stream_->driver, stream_->ctx);
      settle(stream_->driver.api().event_query(event_));
    }
    return report();
  }

  bool wait(double timeout_s) override {
    if (timeout_s < 0) {
      std::lock_guard<std::mutex> lock(mu_);
      if (state_ == kPending) {
        cuda::ContextGuard guard(stream_->driver, stream_->ctx);
        settle(stream_->driver.api().event_synchronize(event_));
      }
      return report();
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    auto pause = std::chrono::microseconds(20);
    for (;;) {
      if (poll()) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds(1000));
    }
  }

 private:
  enum State { kPending, kDone, kFailed };
  // Caller holds mu_.
  void settle(cuda::CUresult r) {
    if (r == cuda::CUDA_SUCCESS) {
      state_ = kDone;
    } else if (r != cuda::CUDA_ERROR_NOT_READY) {
      state_ = kFailed;
      error_ = r;
    }
  }
  bool report() const {
    if (state_ == kFailed)
      throw cuda::DriverError(error_, "a copy on the device failed: " + stream_->driver.describe(error_));
    return state_ == kDone;
  }

  std::shared_ptr<DeviceStream> stream_;
  cuda::CUevent event_;
  std::mutex mu_;
  State state_ = kPending;
  cuda::CUresult error_ = cuda::CUDA_SUCCESS;
};

}  // namespace

DeviceStream::Result DeviceStream::submit(const std::vector<Run>& runs, const std::shared_ptr<DeviceStream>& self) {
  std::lock_guard<std::mutex> lock(mu_);
  cuda::ContextGuard guard(driver, ctx);
  const cuda::Api& api = driver.api();
  Result res;
  std::size_t done = 0;
  if (batch_ && !runs.empty()) {
    std::vector<cuda::CUdeviceptr> dsts(runs.size());
    std::vector<cuda::CUdeviceptr> srcs(runs.size());
    std::vector<std::size_t> sizes(runs.size());
    for (std::size_t i = 0; i < runs.size(); ++i) {
      dsts[i] = runs[i].dst;
      srcs[i] = runs[i].src;
      sizes[i] = runs[i].bytes;
    }
    // Sources are read in stream order: a scatter right after a gather into the same buffer reads what the
    // gather wrote.
    cuda::MemcpyAttributes attr{cuda::CU_MEMCPY_SRC_ACCESS_ORDER_STREAM, {0, 0}, {0, 0}, 0};
    std::size_t first = 0;
    while (done < runs.size()) {
      const std::size_t count = std::min(kMaxBatch, runs.size() - done);
      std::size_t fail_idx = SIZE_MAX;
      const cuda::CUresult r = api.memcpy_batch(dsts.data() + done, srcs.data() + done, sizes.data() + done, count,
                                                &attr, &first, 1, &fail_idx, stream_);
      if (r != cuda::CUDA_SUCCESS) {
        if (mode_ == BatchMode::kRequire) fail(r, "cuMemcpyBatchAsync");
        // Redo this chunk and the rest as a loop (a copy is idempotent, so one the batch already enqueued may
        // run twice), and stop batching on this stream: stats() shows why.
        res.fallbacks += 1;
        res.batch_error = "cuMemcpyBatchAsync failed: " + driver.describe(r) +
                          (fail_idx != SIZE_MAX ? " at copy " + std::to_string(done + fail_idx) : std::string());
        batch_ = false;
        break;
      }
      res.batch_calls += 1;
      done += count;
    }
  }
  res.path = (done == runs.size() && res.batch_calls > 0) ? Path::kCudaBatched : Path::kCudaLoop;
  for (std::size_t i = done; i < runs.size(); ++i) {
    const cuda::CUresult r = api.memcpy_async(runs[i].dst, runs[i].src, runs[i].bytes, stream_);
    if (r != cuda::CUDA_SUCCESS)
      fail(r, "cuMemcpyAsync of run " + std::to_string(i) + " (" + std::to_string(runs[i].bytes) + " bytes)");
    res.copy_calls += 1;
  }
  cuda::CUevent event = nullptr;
  if (cuda::CUresult r = api.event_create(&event, cuda::CU_EVENT_DISABLE_TIMING); r != cuda::CUDA_SUCCESS)
    fail(r, "cuEventCreate");
  if (cuda::CUresult r = api.event_record(event, stream_); r != cuda::CUDA_SUCCESS) {
    api.event_destroy(event);
    fail(r, "cuEventRecord");
  }
  res.completion = std::make_shared<EventCompletion>(self, event);
  return res;
}

// ------------------------------------------------------------------------------------------ engine
CopyEngine::CopyEngine(const EngineOptions& options, cuda::Driver& driver)
    : options_(options), driver_(driver), pool_(options.threads) {}

CopyEngine::~CopyEngine() = default;

std::shared_ptr<DeviceStream> CopyEngine::stream(int device) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_.find(device);
  if (it != streams_.end()) return it->second;
  auto s = std::make_shared<DeviceStream>(driver_, device, options_.batch);
  streams_.emplace(device, s);
  return s;
}

CopyEngine::Submitted CopyEngine::submit(CopyPlan&& plan, int device) {
  const std::uint64_t bytes = plan.bytes;
  const std::uint64_t runs = plan.runs.size();
  Submitted out;
  if (plan.runs.empty() || device < 0) {
    if (plan.runs.empty() || pool_.threads() == 0 || bytes <= options_.inline_bytes) {
      copy_runs(plan.runs.data(), plan.runs.size());
      out = {std::make_shared<Done>(), Path::kInline};
    } else {
      out = {pool_.submit(std::move(plan.runs), bytes), Path::kHostThreads};
    }
    std::lock_guard<std::mutex> lock(mu_);
    stats_.submits += 1;
    stats_.runs += runs;
    stats_.bytes += bytes;
    (out.path == Path::kInline ? stats_.inline_submits : stats_.host_submits) += 1;
    return out;
  }
  std::shared_ptr<DeviceStream> s = stream(device);
  DeviceStream::Result r = s->submit(plan.runs, s);
  std::lock_guard<std::mutex> lock(mu_);
  stats_.submits += 1;
  stats_.device_submits += 1;
  stats_.runs += runs;
  stats_.bytes += bytes;
  stats_.batch_calls += r.batch_calls;
  stats_.copy_calls += r.copy_calls;
  stats_.batch_fallbacks += r.fallbacks;
  if (!r.batch_error.empty()) stats_.last_batch_error = r.batch_error;
  return {std::move(r.completion), r.path};
}

CopyStats CopyEngine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace kvtier
