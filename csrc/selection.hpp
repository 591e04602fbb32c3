// Best-k selection scheduler: runs pairwise-comparison selection for many
// prompts in lockstep so that each model call sees every comparison that is
// ready anywhere. Plain C++17, no Python.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace bf {

enum class Strategy { Bubble, Tournament };

struct Comparison {
  int64_t prompt, a, b;  // a stands earlier in the arrangement
};

class Selector {
 public:
  Selector(const std::vector<int64_t>& n_candidates, int64_t top_k, Strategy strategy,
           const std::vector<std::vector<int64_t>>& initial_orders)
      : k_(top_k), strategy_(strategy) {
    const size_t P = n_candidates.size();
    if (initial_orders.size() != P)
      fail("initial_orders has " + std::to_string(initial_orders.size()) + " entries for " +
           std::to_string(P) + " prompts");
    if (top_k < 1) fail("top_k must be >= 1, got " + std::to_string(top_k));
    prompts_.resize(P);
    for (size_t p = 0; p < P; ++p) {
      const int64_t n = n_candidates[p];
      if (n < 1) fail("prompt " + std::to_string(p) + " has " + std::to_string(n) + " candidates; need at least 1");
      if (top_k > n)
        fail("top_k = " + std::to_string(top_k) + " exceeds the " + std::to_string(n) +
             " candidates of prompt " + std::to_string(p));
      const auto& order = initial_orders[p];
      if (static_cast<int64_t>(order.size()) != n)
        fail("initial_orders[" + std::to_string(p) + "] has length " + std::to_string(order.size()) +
             ", expected " + std::to_string(n));
      std::vector<char> seen(static_cast<size_t>(n), 0);
      for (int64_t c : order) {
        if (c < 0 || c >= n || seen[c])
          fail("initial_orders[" + std::to_string(p) + "] is not a permutation of 0.." +
               std::to_string(n - 1));
        seen[c] = 1;
      }
      init_prompt(prompts_[p], n, order);
      if (!prompts_[p].finished) ++unfinished_;
    }
  }

  int64_t n_prompts() const { return static_cast<int64_t>(prompts_.size()); }
  int64_t k() const { return k_; }
  Strategy strategy() const { return strategy_; }

  bool done() const {
    std::lock_guard<std::mutex> lock(mu_);
    return unfinished_ == 0;
  }

  // Every comparison ready now, across prompts; they stay in flight until feed().
  std::vector<Comparison> next() {
    std::lock_guard<std::mutex> lock(mu_);
    if (!pending_.empty()) fail("next() called again before feed() answered the previous batch");
    for (size_t p = 0; p < prompts_.size(); ++p) {
      Prompt& s = prompts_[p];
      if (s.finished) continue;
      const size_t before = pending_.size();
      if (strategy_ == Strategy::Bubble)
        bubble_ready(s, static_cast<int64_t>(p));
      else
        tournament_ready(s, static_cast<int64_t>(p));
      if (pending_.size() > before) ++s.steps;
    }
    std::vector<Comparison> rows;
    rows.reserve(pending_.size());
    for (const Pending& q : pending_) rows.push_back({q.prompt, q.a, q.b});
    return rows;
  }

  // score > 0: a wins; < 0: b wins; == 0: the lower candidate index wins, a
  // rule that does not depend on the arrangement.
  void feed(const double* scores, int64_t m) {
    std::lock_guard<std::mutex> lock(mu_);
    if (pending_.empty()) fail("feed() without a pending next() batch");
    if (m != static_cast<int64_t>(pending_.size()))
      fail("feed() expected " + std::to_string(pending_.size()) +
           " scores (one per row of the last next()), got " + std::to_string(m));
    // Check everything before touching state, so a rejected feed can be retried.
    for (int64_t i = 0; i < m; ++i)
      if (std::isnan(scores[i])) {
        const Pending& q = pending_[i];
        fail("score is NaN for prompt " + std::to_string(q.prompt) + ", candidates " +
             std::to_string(q.a) + " vs " + std::to_string(q.b));
      }
    for (int64_t i = 0; i < m; ++i) {
      const Pending& q = pending_[i];
      Prompt& s = prompts_[q.prompt];
      const double x = scores[i];
      const int64_t w = x > 0 ? q.a : x < 0 ? q.b : std::min(q.a, q.b);
      s.log.push_back({q.a, q.b, w});
      if (strategy_ == Strategy::Bubble)
        bubble_apply(s, q.tag, w);
      else
        tournament_apply(s, q.tag, q.a, q.b, w);
      if (s.finished) --unfinished_;  // only the prompt's last comparison finishes it
    }
    pending_.clear();
  }

  std::vector<int64_t> top_k(int64_t p) const {
    std::lock_guard<std::mutex> lock(mu_);
    const Prompt& s = at(p);
    if (!s.finished) fail("prompt " + std::to_string(p) + " has not finished its selection yet");
    return s.top;
  }
  // Comparisons decided by the model; pairs answered from the tournament's
  // memo are not counted (and not logged).
  int64_t comparisons(int64_t p) const {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<int64_t>(at(p).log.size());
  }
  int64_t steps(int64_t p) const {
    std::lock_guard<std::mutex> lock(mu_);
    return at(p).steps;
  }
  // (a, b, winner) in resolution order.
  std::vector<std::array<int64_t, 3>> log(int64_t p) const {
    std::lock_guard<std::mutex> lock(mu_);
    return at(p).log;
  }

 private:
  static constexpr int64_t kEmpty = -1;
  enum NodeState : uint8_t { kUnresolved, kReady, kInFlight, kResolved };

  struct Prompt {
    int64_t n = 0;
    bool finished = false;
    int64_t steps = 0;
    std::vector<int64_t> top;
    std::vector<std::array<int64_t, 3>> log;
    // bubble
    std::vector<int64_t> arr, prog;
    std::vector<char> busy;
    int64_t rounds = 0, first_open = 0;
    // tournament: heap-ordered bracket, leaves at [size, 2*size)
    int64_t size = 0;
    std::vector<int64_t> win, leaf_of, ready;
    std::vector<uint8_t> state;
    std::unordered_map<int64_t, int64_t> memo;  // unordered pair -> winner
  };

  struct Pending {
    int64_t prompt, a, b, tag;  // tag: bubble round or bracket node
  };

  [[noreturn]] static void fail(const std::string& msg) { throw std::invalid_argument(msg); }

  const Prompt& at(int64_t p) const {
    if (p < 0 || p >= n_prompts())
      fail("prompt index " + std::to_string(p) + " is out of range for " +
           std::to_string(n_prompts()) + " prompts");
    return prompts_[p];
  }

  void init_prompt(Prompt& s, int64_t n, const std::vector<int64_t>& order) {
    s.n = n;
    if (n == 1) {
      s.top = {order[0]};
      finish(s);
      return;
    }
    if (strategy_ == Strategy::Bubble) {
      s.arr = order;
      // The k-th round would have nothing left to compare when k == n.
      s.rounds = std::min(k_, n - 1);
      s.prog.assign(static_cast<size_t>(s.rounds), 0);
      s.busy.assign(static_cast<size_t>(s.rounds), 0);
    } else {
      int64_t size = 1;
      while (size < n) size *= 2;
      s.size = size;
      s.win.assign(static_cast<size_t>(2 * size), kEmpty);
      s.state.assign(static_cast<size_t>(2 * size), kUnresolved);
      s.leaf_of.assign(static_cast<size_t>(n), 0);
      for (int64_t i = 0; i < size; ++i) {
        s.state[size + i] = kResolved;
        if (i < n) {
          s.win[size + i] = order[i];
          s.leaf_of[order[i]] = size + i;
        }
      }
      for (int64_t u = std::max<int64_t>(1, size / 2); u < size; ++u) settle(s, u);
    }
  }

  void finish(Prompt& s) {
    s.finished = true;
    // Drop per-run scratch; results stay.
    s.arr.clear(); s.prog.clear(); s.busy.clear();
    s.win.clear(); s.leaf_of.clear(); s.ready.clear(); s.state.clear(); s.memo.clear();
  }

  // ---- bubble -----------------------------------------------------------
  // Round r sweeps j = 0..n-r-2 carrying the better of arr[j], arr[j+1] to
  // j+1. Round r's step at j reads positions j and j+1, whose last writers in
  // round r-1 are its steps at j and j+1, and round r-1's later steps only
  // touch positions >= j+2. So it may run once round r did j-1 and round r-1
  // did j+1: same comparisons, same outcome as the sequential sweep, but the
  // rounds advance as a wavefront in n+k-2 steps.
  int64_t round_total(const Prompt& s, int64_t r) const { return s.n - r - 1; }

  void bubble_ready(Prompt& s, int64_t p) {
    for (int64_t r = s.first_open; r < s.rounds; ++r) {
      const int64_t j = s.prog[r];
      if (s.busy[r] || j == round_total(s, r)) continue;
      if (r > 0 && s.prog[r - 1] < j + 2) {
        if (j == 0) break;  // later rounds cannot have started either
        continue;
      }
      s.busy[r] = 1;
      pending_.push_back({p, s.arr[j], s.arr[j + 1], r});
    }
  }

  void bubble_apply(Prompt& s, int64_t r, int64_t w) {
    const int64_t j = s.prog[r];
    if (w == s.arr[j]) std::swap(s.arr[j], s.arr[j + 1]);
    ++s.prog[r];
    s.busy[r] = 0;
    while (s.first_open < s.rounds && s.prog[s.first_open] == round_total(s, s.first_open))
      ++s.first_open;
    if (s.first_open == s.rounds) {
      for (int64_t i = 0; i < k_; ++i) s.top.push_back(s.arr[s.n - 1 - i]);
      finish(s);
    }
  }

  // ---- tournament -------------------------------------------------------
  int64_t pair_key(const Prompt& s, int64_t a, int64_t b) const {
    return a < b ? a * s.n + b : b * s.n + a;
  }

  // Decides node u if both children are decided: byes and remembered pairs
  // resolve on the spot (and propagate), a new pair becomes a ready match.
  void settle(Prompt& s, int64_t u) {
    while (u >= 1) {
      if (s.state[2 * u] != kResolved || s.state[2 * u + 1] != kResolved) return;
      const int64_t a = s.win[2 * u], b = s.win[2 * u + 1];
      int64_t w;
      if (a == kEmpty) {
        w = b;
      } else if (b == kEmpty) {
        w = a;
      } else {
        auto it = s.memo.find(pair_key(s, a, b));
        if (it == s.memo.end()) {
          s.state[u] = kReady;
          s.ready.push_back(u);
          return;
        }
        w = it->second;
      }
      u = resolve(s, u, w);
    }
  }

  // Records the winner of node u; returns the next node to settle (0: none).
  int64_t resolve(Prompt& s, int64_t u, int64_t w) {
    s.win[u] = w;
    s.state[u] = kResolved;
    if (u > 1) return u / 2;
    // Root decided: the next best is found by replaying only the removed
    // winner's path; every other match result in the bracket still stands.
    s.top.push_back(w);
    if (static_cast<int64_t>(s.top.size()) == k_ || w == kEmpty) {
      finish(s);
      return 0;
    }
    const int64_t leaf = s.leaf_of[w];
    s.win[leaf] = kEmpty;
    for (int64_t v = leaf / 2; v >= 1; v /= 2) s.state[v] = kUnresolved;
    return leaf / 2;
  }

  void tournament_ready(Prompt& s, int64_t p) {
    // Heap order = level by level, left to right: a stable, readable row order.
    std::sort(s.ready.begin(), s.ready.end());
    for (int64_t u : s.ready) {
      s.state[u] = kInFlight;
      pending_.push_back({p, s.win[2 * u], s.win[2 * u + 1], u});
    }
    s.ready.clear();
  }

  void tournament_apply(Prompt& s, int64_t u, int64_t a, int64_t b, int64_t w) {
    s.memo[pair_key(s, a, b)] = w;
    const int64_t next = resolve(s, u, w);
    if (next >= 1) settle(s, next);
  }

  int64_t k_;
  Strategy strategy_;
  std::vector<Prompt> prompts_;
  std::vector<Pending> pending_;
  int64_t unfinished_ = 0;
  mutable std::mutex mu_;
};

}  // namespace bf
