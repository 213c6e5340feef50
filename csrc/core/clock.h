// The store's one clock. Every call may pass `now` (seconds on the caller's clock; NaN = none given);
// these are the only rules that turn it into the time an operation happens at.
//
//   advance(now)         a call's time: `now`, or the monotonic clock when none is given. Never
//                        earlier than a time seen before (Error otherwise). Moves the clock.
//   advance_or_latest()  a release's time (unpin, the end of a load): `now`, or the latest time seen
//                        when none is given, so code driving its own clock may release without one.
//   latest()             work beside the calls (the disk writer, making room in the folder): the
//                        latest time seen (0 before any), never moving the clock.
//   peek()               what advance(NaN) would return now, without moving the clock.
//   catch_up(now)        a call that waited goes on at the later of its time and the clock's.
//
// Restoring a disk folder is a call like any other: its blocks are dated advance(now).
// Not thread-safe: the store calls it under its lock.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>

#include "core/common.h"

namespace kvtier {

class Clock {
 public:
  static double monotonic() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
  }

  double advance(double now) {
    if (std::isnan(now)) now = std::max(monotonic(), last_);
    if (!std::isfinite(now)) throw Error(Code::kInvalidArgument, "now must be a finite number of seconds");
    if (now < last_)
      throw Error(Code::kInvalidArgument, "now=" + format_double(now) + " is earlier than the store's clock (" +
                                              format_double(last_) + "); time must not go backwards");
    last_ = now;
    return now;
  }
  double advance_or_latest(double now) { return advance(std::isnan(now) && seen() ? last_ : now); }
  double latest() const { return seen() ? last_ : 0.0; }
  double peek() const { return std::max(monotonic(), last_); }
  // A call that waited (for room in the write queue) goes on at the later of its time and the clock's.
  double catch_up(double now) const { return std::max(now, last_); }
  // Throws unless `t` (a batch's first time, named `what`) is not earlier than the clock; `fix` says
  // what to do instead. Does not move the clock.
  void check_not_before(double t, const std::string& what, const std::string& fix) const {
    if (t < last_)
      throw Error(Code::kInvalidArgument, what + " = " + format_double(t) + " is earlier than the store's clock (" +
                                              format_double(last_) + "); " + fix);
  }
  bool seen() const { return std::isfinite(last_); }

 private:
  double last_ = -INFINITY;
};

}  // namespace kvtier
