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

enum class Strategy { Bubble, Tournament, Swiss, KnockoutRR, Adaptive };

// The budgeted strategies take a budget in comparisons per prompt and never exceed it.
inline bool is_budgeted(Strategy s) {
  return s == Strategy::Swiss || s == Strategy::KnockoutRR || s == Strategy::Adaptive;
}

inline const char* strategy_name(Strategy s) {
  switch (s) {
    case Strategy::Bubble: return "bubble";
    case Strategy::Tournament: return "tournament";
    case Strategy::Swiss: return "swiss";
    case Strategy::KnockoutRR: return "knockout_rr";
    case Strategy::Adaptive: return "adaptive";
  }
  return "?";
}

// Fewest comparisons a budgeted strategy accepts for the top k of n: a knockout's n-1 (every
// candidate but one can lose once); knockout_rr with m = k survivors: n-k matches + k(k-1)/2.
inline int64_t min_budget(Strategy s, int64_t n, int64_t k) {
  if (n <= 1) return 0;
  if (s == Strategy::KnockoutRR) return n - k + k * (k - 1) / 2;
  return n - 1;
}

// knockout_rr: the largest m >= k whose knockout to m (n-m matches) plus round robin among the m
// (m(m-1)/2) fits the budget.
inline int64_t survivors_for(int64_t n, int64_t k, int64_t budget) {
  int64_t m = k;
  while (m < n && n - (m + 1) + (m + 1) * m / 2 <= budget) ++m;
  return m;
}

struct Comparison {
  int64_t prompt, a, b;  // a stands earlier in the arrangement
};

class Selector {
 public:
  // budgets: comparisons per prompt, one entry per prompt for swiss / knockout_rr / adaptive and
  // empty for bubble / tournament.
  Selector(const std::vector<int64_t>& n_candidates, int64_t top_k, Strategy strategy,
           const std::vector<std::vector<int64_t>>& initial_orders,
           const std::vector<int64_t>& budgets = {})
      : k_(top_k), strategy_(strategy) {
    const size_t P = n_candidates.size();
    if (initial_orders.size() != P)
      fail("initial_orders has " + std::to_string(initial_orders.size()) + " entries for " +
           std::to_string(P) + " prompts");
    if (top_k < 1) fail("top_k must be >= 1, got " + std::to_string(top_k));
    if (is_budgeted(strategy) && budgets.size() != P)
      fail(std::string("strategy '") + strategy_name(strategy) + "' needs a budget per prompt: got " +
           std::to_string(budgets.size()) + " for " + std::to_string(P) + " prompts");
    if (!is_budgeted(strategy) && !budgets.empty())
      fail(std::string("a budget applies to swiss, knockout_rr and adaptive, not to '") +
           strategy_name(strategy) + "'");
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
      if (is_budgeted(strategy)) {
        const int64_t need = min_budget(strategy, n, top_k);
        if (budgets[p] < need)
          fail("budget = " + std::to_string(budgets[p]) + " comparisons for prompt " + std::to_string(p) +
               " is below the " + std::to_string(need) + " that " + strategy_name(strategy) +
               " needs for top_k = " + std::to_string(top_k) + " of " + std::to_string(n) + " candidates");
        prompts_[p].left = budgets[p];
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
      else if (strategy_ == Strategy::Tournament)
        tournament_ready(s, static_cast<int64_t>(p));
      else
        budgeted_ready(s, static_cast<int64_t>(p));
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
      } else if (is_budgeted(strategy_) && std::isinf(scores[i])) {
        // Ratings add margins up: an infinite one would turn them into NaN.
        const Pending& q = pending_[i];
        fail("score is infinite for prompt " + std::to_string(q.prompt) + ", candidates " +
             std::to_string(q.a) + " vs " + std::to_string(q.b) + "; " + strategy_name(strategy_) +
             " needs finite logits");
      }
    for (int64_t i = 0; i < m; ++i) {
      const Pending& q = pending_[i];
      Prompt& s = prompts_[q.prompt];
      const double x = scores[i];
      const int64_t w = x > 0 ? q.a : x < 0 ? q.b : std::min(q.a, q.b);
      s.log.push_back({q.a, q.b, w});
      if (strategy_ == Strategy::Bubble)
        bubble_apply(s, q.tag, w);
      else if (strategy_ == Strategy::Tournament)
        tournament_apply(s, q.tag, q.a, q.b, w);
      else
        budgeted_apply(s, q.a, q.b, x, w);
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
    // budgeted (swiss, knockout_rr, adaptive): every comparison made so far, and the next round
    int64_t left = 0;                 // comparisons the budget still allows
    int64_t in_flight = 0;            // comparisons of the current round not answered yet
    std::vector<int64_t> order, pos;  // the arrangement and each candidate's place in it
    std::vector<double> margin;       // [n*n]: margin of i over j (d_ji = -d_ij), when played
    std::vector<char> played;         // [n*n]
    std::vector<std::vector<int64_t>> nbrs;
    std::vector<int64_t> wins, losses;
    std::vector<int64_t> alive;       // knockout_rr: survivors, in arrangement order
    int64_t m = 0;                    // knockout_rr: survivors that play the round robin
    bool rr_done = false;             // knockout_rr: the round robin has been scheduled
    int phase = 0;                    // adaptive: 0 matching, 1 knockout round, 2 adaptive steps
    std::vector<std::array<int64_t, 2>> queued;  // the next round, planned when the last one ended
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
    if (is_budgeted(strategy_)) {
      budgeted_init(s, order);
    } else if (strategy_ == Strategy::Bubble) {
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
    s.order.clear(); s.pos.clear(); s.margin.clear(); s.played.clear(); s.nbrs.clear();
    s.wins.clear(); s.losses.clear(); s.alive.clear(); s.queued.clear();
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

  // ---- budgeted strategies: swiss, knockout_rr, adaptive ------------------
  // Each round is planned from the results of the rounds before it, when the last comparison of the
  // previous round is answered (so done() knows at once whether anything is left to play). No pair is
  // ever played twice: a round only takes unplayed pairs, and the budget caps every round.
  // tests/budget_twins.py is the plain twin; the arithmetic below is done in the same order there.
  static constexpr int kSweeps = 50;   // Gauss-Seidel sweeps of the rating solve
  static constexpr double kRidge = 1.0;  // one pseudo-game against an average (rating 0) candidate

  double& d(Prompt& s, int64_t i, int64_t j) const { return s.margin[static_cast<size_t>(i * s.n + j)]; }
  bool was_played(const Prompt& s, int64_t i, int64_t j) const {
    return s.played[static_cast<size_t>(i * s.n + j)] != 0;
  }

  void budgeted_init(Prompt& s, const std::vector<int64_t>& order) {
    const int64_t n = s.n;
    s.order = order;
    s.pos.assign(static_cast<size_t>(n), 0);
    for (int64_t i = 0; i < n; ++i) s.pos[order[i]] = i;
    s.margin.assign(static_cast<size_t>(n * n), 0.0);
    s.played.assign(static_cast<size_t>(n * n), 0);
    s.nbrs.assign(static_cast<size_t>(n), {});
    s.wins.assign(static_cast<size_t>(n), 0);
    s.losses.assign(static_cast<size_t>(n), 0);
    if (strategy_ == Strategy::KnockoutRR) {
      s.alive = order;
      s.m = survivors_for(n, k_, s.left);
    }
    plan(s);
  }

  void budgeted_ready(Prompt& s, int64_t p) {
    for (const auto& q : s.queued) pending_.push_back({p, q[0], q[1], -1});
    s.in_flight = static_cast<int64_t>(s.queued.size());
    s.left -= s.in_flight;
    s.queued.clear();
  }

  void budgeted_apply(Prompt& s, int64_t a, int64_t b, double x, int64_t w) {
    d(s, a, b) = x;
    d(s, b, a) = -x;
    s.played[static_cast<size_t>(a * s.n + b)] = 1;
    s.played[static_cast<size_t>(b * s.n + a)] = 1;
    s.nbrs[a].push_back(b);
    s.nbrs[b].push_back(a);
    ++s.wins[w];
    ++s.losses[w == a ? b : a];
    if (--s.in_flight == 0) plan(s);
  }

  // Least-squares (Massey) ratings with a ridge, (deg_i + ridge) r_i - sum_j r_j = sum_j d_ij, by
  // Gauss-Seidel sweeps with neighbours in increasing index order. Only additions and divisions, so
  // no compiler can contract them into FMAs and the twin agrees bit for bit.
  std::vector<double> ratings(Prompt& s) const {
    std::vector<double> r(static_cast<size_t>(s.n), 0.0);
    for (auto& nb : s.nbrs) std::sort(nb.begin(), nb.end());
    for (int sweep = 0; sweep < kSweeps; ++sweep)
      for (int64_t i = 0; i < s.n; ++i) {
        double acc = 0.0;
        for (int64_t j : s.nbrs[i]) acc += d(s, i, j) + r[j];
        r[i] = acc / (static_cast<double>(s.nbrs[i].size()) + kRidge);
      }
    return r;
  }

  // Plans the next round into s.queued; an empty plan finishes the prompt.
  void plan(Prompt& s) {
    s.queued.clear();
    if (s.n > 1 && s.left > 0) {
      if (strategy_ == Strategy::Swiss) plan_swiss(s);
      else if (strategy_ == Strategy::KnockoutRR) plan_knockout_rr(s);
      else plan_adaptive(s);
    }
    if (static_cast<int64_t>(s.queued.size()) > s.left) s.queued.resize(static_cast<size_t>(s.left));
    if (s.queued.empty()) {
      s.top = final_ranking(s);
      finish(s);
    }
  }

  // Swiss: rank by (losses, -rating, arrangement place); each unpaired candidate meets the next
  // unpaired one below it that it has not met. Top pairs come first, so a cut round keeps them.
  void plan_swiss(Prompt& s) {
    const std::vector<double> r = ratings(s);
    std::vector<int64_t> ranking(static_cast<size_t>(s.n));
    for (int64_t i = 0; i < s.n; ++i) ranking[i] = i;
    std::sort(ranking.begin(), ranking.end(), [&](int64_t a, int64_t b) {
      if (s.losses[a] != s.losses[b]) return s.losses[a] < s.losses[b];
      if (r[a] != r[b]) return r[a] > r[b];
      return s.pos[a] < s.pos[b];
    });
    std::vector<char> paired(static_cast<size_t>(s.n), 0);
    for (int64_t x = 0; x < s.n; ++x) {
      const int64_t i = ranking[x];
      if (paired[i]) continue;
      for (int64_t y = x + 1; y < s.n; ++y) {
        const int64_t j = ranking[y];
        if (!paired[j] && !was_played(s, i, j)) {
          paired[i] = paired[j] = 1;
          s.queued.push_back({i, j});
          break;
        }
      }
    }
  }

  // knockout_rr: knockout rounds over the survivors in arrangement order (only as many matches as it
  // takes to get down to m), then one round robin among the m. Survivors never lost, so they have
  // never met: no pair repeats.
  void plan_knockout_rr(Prompt& s) {
    if (!s.log.empty() && !s.rr_done) {  // drop the losers of the round just answered
      std::vector<int64_t> kept;
      for (int64_t c : s.alive)
        if (s.losses[c] == 0) kept.push_back(c);
      s.alive.swap(kept);
    }
    const int64_t alive = static_cast<int64_t>(s.alive.size());
    if (alive > s.m) {
      const int64_t matches = std::min(alive / 2, alive - s.m);
      for (int64_t i = 0; i < matches; ++i) s.queued.push_back({s.alive[2 * i], s.alive[2 * i + 1]});
    } else if (!s.rr_done) {
      s.rr_done = true;
      for (int64_t i = 0; i < alive; ++i)
        for (int64_t j = i + 1; j < alive; ++j) s.queued.push_back({s.alive[i], s.alive[j]});
    }
  }

  // adaptive: first a matching over the arrangement; then a knockout round among the unbeaten (by
  // rating: best against second best, ...) unless at most k are unbeaten; then, per_step a round, the
  // unplayed pairs touching the top k + 1 by rating whose rating gap is smallest for its uncertainty,
  // |r_i - r_j| / sqrt(1/(g_i+1) + 1/(g_j+1)) (g: games played); when those run out, any unplayed pair.
  static int64_t per_step(int64_t n) { return std::max<int64_t>(2, (n + 3) / 4); }

  void plan_adaptive(Prompt& s) {
    if (s.phase == 0) {
      s.phase = 1;
      for (int64_t i = 0; i + 1 < s.n; i += 2) s.queued.push_back({s.order[i], s.order[i + 1]});
      return;
    }
    const std::vector<double> r = ratings(s);
    if (s.phase == 1) {
      s.phase = 2;
      std::vector<int64_t> unbeaten;
      for (int64_t c = 0; c < s.n; ++c)
        if (s.losses[c] == 0) unbeaten.push_back(c);
      std::sort(unbeaten.begin(), unbeaten.end(), [&](int64_t a, int64_t b) {
        if (r[a] != r[b]) return r[a] > r[b];
        return a < b;
      });
      if (static_cast<int64_t>(unbeaten.size()) > k_) {
        for (size_t i = 0; i + 1 < unbeaten.size(); i += 2) s.queued.push_back({unbeaten[i], unbeaten[i + 1]});
        return;
      }
    }
    std::vector<int64_t> ranking(static_cast<size_t>(s.n));
    for (int64_t i = 0; i < s.n; ++i) ranking[i] = i;
    std::sort(ranking.begin(), ranking.end(), [&](int64_t a, int64_t b) {
      if (r[a] != r[b]) return r[a] > r[b];
      return a < b;
    });
    std::vector<char> in_top(static_cast<size_t>(s.n), 0);
    for (int64_t i = 0; i < std::min(k_ + 1, s.n); ++i) in_top[ranking[i]] = 1;
    struct Cand { double prio; int64_t i, j; };
    std::vector<Cand> cand;
    for (int pass = 0; pass < 2 && cand.empty(); ++pass)
      for (int64_t i = 0; i < s.n; ++i)
        for (int64_t j = i + 1; j < s.n; ++j) {
          if (was_played(s, i, j) || (pass == 0 && !in_top[i] && !in_top[j])) continue;
          const double gi = static_cast<double>(s.nbrs[i].size() + 1);
          const double gj = static_cast<double>(s.nbrs[j].size() + 1);
          cand.push_back({std::fabs(r[i] - r[j]) / std::sqrt(1.0 / gi + 1.0 / gj), i, j});
        }
    const int64_t take = std::min<int64_t>(per_step(s.n), static_cast<int64_t>(cand.size()));
    std::partial_sort(cand.begin(), cand.begin() + take, cand.end(), [](const Cand& a, const Cand& b) {
      if (a.prio != b.prio) return a.prio < b.prio;
      if (a.i != b.i) return a.i < b.i;
      return a.j < b.j;
    });
    for (int64_t t = 0; t < take; ++t) s.queued.push_back({cand[t].i, cand[t].j});
  }

  // The pick, best first. swiss: the only unbeaten candidate if there is exactly one (then a Condorcet
  // winner, if any, is that one), then rating; adaptive: rating; knockout_rr: the round robin's
  // Condorcet winner if any (a Condorcet winner of all n never loses, so it is that one), then the
  // round-robin margin sum. Ties: lower candidate index.
  std::vector<int64_t> final_ranking(Prompt& s) {
    std::vector<int64_t> out;
    if (s.n == 1) return {s.order[0]};
    if (strategy_ == Strategy::KnockoutRR) {
      std::vector<int64_t> sorted_alive = s.alive;
      std::sort(sorted_alive.begin(), sorted_alive.end());
      std::vector<int64_t> w(static_cast<size_t>(s.n), 0);
      std::vector<double> msum(static_cast<size_t>(s.n), 0.0);
      for (int64_t c : s.alive)
        for (int64_t o : sorted_alive)
          if (o != c) {
            const double x = d(s, c, o);
            msum[c] += x;
            // Decided as feed() decided it: the pair's first candidate won on a score of 0 iff it has
            // the lower index, which is the lower index either way.
            if (x > 0 || (x == 0 && c < o)) ++w[c];
          }
      out = s.alive;
      const int64_t all_won = static_cast<int64_t>(s.alive.size()) - 1;
      std::sort(out.begin(), out.end(), [&](int64_t a, int64_t b) {
        const bool ca = w[a] == all_won, cb = w[b] == all_won;
        if (ca != cb) return ca;
        if (msum[a] != msum[b]) return msum[a] > msum[b];
        return a < b;
      });
    } else {
      const std::vector<double> r = ratings(s);
      out.resize(static_cast<size_t>(s.n));
      for (int64_t i = 0; i < s.n; ++i) out[i] = i;
      int64_t first = -1;  // swiss: the only unbeaten candidate, if exactly one
      if (strategy_ == Strategy::Swiss)
        for (int64_t c = 0; c < s.n; ++c)
          if (s.losses[c] == 0) {
            if (first != -1) { first = -1; break; }
            first = c;
          }
      std::sort(out.begin(), out.end(), [&](int64_t a, int64_t b) {
        if ((a == first) != (b == first)) return a == first;
        if (r[a] != r[b]) return r[a] > r[b];
        return a < b;
      });
    }
    out.resize(static_cast<size_t>(k_));
    return out;
  }

  int64_t k_;
  Strategy strategy_;
  std::vector<Prompt> prompts_;
  std::vector<Pending> pending_;
  int64_t unfinished_ = 0;
  mutable std::mutex mu_;
};

}  // namespace bf
