// A small C++ test of the copy planner and the host worker pool, for sanitizer builds (the pytest suite is the
// source of truth). Build: cmake -DKVTIER_BUILD_TESTS=ON [-DKVTIER_SANITIZE=ON | -DKVTIER_TSAN=ON]; run the binary.
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>
#include <vector>

#include "core/common.h"
#include "cuda/copy_engine.h"
#include "cuda/copy_plan.h"

using namespace kvtier;

#define CHECK(expr)                                                              \
  do {                                                                           \
    if (!(expr)) {                                                               \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr); \
      std::exit(1);                                                              \
    }                                                                            \
  } while (0)

namespace {

std::uint64_t addr(const void* p) { return reinterpret_cast<std::uint64_t>(p); }

void test_plan_merges() {
  std::vector<std::uint8_t> cache(16 * 128);
  KVLayout layout({Region{addr(cache.data()), 128, 128}}, 16, -1);
  std::vector<std::uint8_t> out(6 * 128);
  const std::uint64_t ids[] = {4, 5, 6, 9, 10, 0};
  BlockBuffer buf;
  buf.base = addr(out.data());
  buf.stride = 128;
  CopyPlan p = plan_copy(layout, ids, 6, buf, Direction::kGather);
  CHECK(p.runs.size() == 3 && p.unmerged == 6 && p.bytes == 6 * 128);
  CHECK(p.runs[0].src == addr(cache.data()) + 4 * 128 && p.runs[0].bytes == 3 * 128);
  CHECK(p.runs[2].dst == addr(out.data()) + 5 * 128 && p.runs[2].bytes == 128);
  bool threw = false;
  try {
    const std::uint64_t dup[] = {1, 1};
    plan_copy(layout, dup, 2, buf, Direction::kScatter);
  } catch (const Error& e) {
    threw = e.code() == Code::kInvalidArgument && std::strstr(e.what(), "appears twice") != nullptr;
  }
  CHECK(threw);
}

// Many threads submit gathers of random blocks on one engine; every result is checked.
void test_pool_under_threads() {
  constexpr std::size_t kBlocks = 512, kRegions = 6, kRun = 4096;
  std::vector<std::vector<std::uint8_t>> regions(kRegions, std::vector<std::uint8_t>(kBlocks * kRun));
  std::mt19937_64 rng(7);
  for (auto& r : regions)
    for (auto& b : r) b = static_cast<std::uint8_t>(rng());
  std::vector<Region> rs;
  for (auto& r : regions) rs.push_back(Region{addr(r.data()), kRun, kRun});
  KVLayout layout(rs, kBlocks, -1);
  EngineOptions opt;
  opt.threads = 3;
  opt.inline_bytes = 0;
  CopyEngine engine(opt);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 r(static_cast<std::uint64_t>(t));
      for (int iter = 0; iter < 25; ++iter) {
        std::vector<std::uint64_t> ids(64);
        for (auto& id : ids) id = r() % kBlocks;
        std::vector<std::uint8_t> out(ids.size() * kRegions * kRun);
        BlockBuffer buf;
        buf.base = addr(out.data());
        buf.stride = kRegions * kRun;
        CopyEngine::Submitted s =
            engine.submit(plan_copy(layout, ids.data(), ids.size(), buf, Direction::kGather), -1);
        CHECK(s.path == Path::kHostThreads);
        if (iter % 2) CHECK(s.completion->wait(-1.0));
        else
          while (!s.completion->poll()) std::this_thread::yield();
        for (std::size_t i = 0; i < ids.size(); ++i)
          for (std::size_t g = 0; g < kRegions; ++g)
            CHECK(std::memcmp(out.data() + (i * kRegions + g) * kRun, regions[g].data() + ids[i] * kRun, kRun) == 0);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(engine.stats().host_submits == 100);
}

}  // namespace

int main() {
  test_plan_merges();
  test_pool_under_threads();
  std::puts("copy_engine_test: ok");
  return 0;
}
