//! Placing replicas onto fractional GPU slots.
//!
//! Each card holds 1.0 GPU. A replica asks for `num_gpus` (a fraction up to 1, or a whole
//! number of cards) and `memory` bytes on each card it uses (its weights and batch
//! buffers). Asks are packed best-fit, largest first: a fraction goes to the card it fills
//! most tightly, a whole-card ask to untouched cards. When that heuristic leaves an ask
//! out of a small problem, an exact search looks for a placement that fits more.
//!
//! Shares are counted in ten-thousandths of a card, so `0.1 × 10` fills a card exactly,
//! with no floating-point drift.
//!
//! Pure arithmetic over free memory and asks: no inventory, no config.

/// Shares of one card.
pub const CARD: u32 = 10_000;

/// Up to this many asks, a placement the heuristic could not complete is searched exactly.
const EXACT_SEARCH_MAX_ASKS: usize = 10;

/// The exact search gives up after visiting this many partial placements (many identical
/// cards and whole-card asks make the tree explode) and keeps the best found so far.
const EXACT_SEARCH_BUDGET: usize = 200_000;

/// One replica's need.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ask {
    pub num_gpus: f64,
    /// Bytes needed on each card the replica uses.
    pub memory: u64,
}

impl Ask {
    /// `(cards, share of each)`: a fraction is one card at that share; `n ≥ 1` whole
    /// cards at a full share each.
    fn shape(&self) -> (usize, u32) {
        if self.num_gpus <= 1.0 {
            (1, ((self.num_gpus * CARD as f64).round() as u32).clamp(1, CARD))
        } else {
            (self.num_gpus.round() as usize, CARD)
        }
    }
}

/// What is left on a card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Free {
    pub share: u32,
    pub memory: u64,
}

/// Where each ask went: the cards it uses, or `None`.
pub type Placement = Vec<Option<Vec<usize>>>;

/// Places `asks` onto cards with `memory_free` bytes each (all shares free).
pub fn place(memory_free: &[u64], asks: &[Ask]) -> Placement {
    let start: Vec<Free> = memory_free.iter().map(|&m| Free { share: CARD, memory: m }).collect();
    // Largest first: whole cards, then bigger fractions, then more memory.
    let mut order: Vec<usize> = (0..asks.len()).collect();
    order.sort_by(|&a, &b| {
        let (ca, sa) = asks[a].shape();
        let (cb, sb) = asks[b].shape();
        (cb, sb, asks[b].memory).cmp(&(ca, sa, asks[a].memory)).then(a.cmp(&b))
    });
    let mut free = start.clone();
    let mut placed: Placement = vec![None; asks.len()];
    for &i in &order {
        placed[i] = best_fit(&mut free, asks[i]);
    }
    let missing = placed.iter().filter(|p| p.is_none()).count();
    if missing > 0 && asks.len() <= EXACT_SEARCH_MAX_ASKS {
        let mut search = Search {
            asks,
            order: &order,
            best: placed.clone(),
            best_count: asks.len() - missing,
            current: vec![None; asks.len()],
            budget: EXACT_SEARCH_BUDGET,
        };
        let mut free = start;
        search.run(0, 0, &mut free);
        placed = search.best;
    }
    placed
}

/// Cards that can take `ask` now.
fn candidates(free: &[Free], ask: Ask) -> Vec<usize> {
    let (cards, share) = ask.shape();
    (0..free.len())
        .filter(|&c| free[c].memory >= ask.memory && free[c].share >= share && (cards == 1 || free[c].share == CARD))
        .collect()
}

fn take(free: &mut [Free], cards: &[usize], ask: Ask) {
    let (_, share) = ask.shape();
    for &c in cards {
        free[c].share -= share;
        free[c].memory -= ask.memory;
    }
}

fn give_back(free: &mut [Free], cards: &[usize], ask: Ask) {
    let (_, share) = ask.shape();
    for &c in cards {
        free[c].share += share;
        free[c].memory += ask.memory;
    }
}

/// The tightest cards for `ask`, taken; `None` when it does not fit.
fn best_fit(free: &mut [Free], ask: Ask) -> Option<Vec<usize>> {
    let (cards, share) = ask.shape();
    let mut fits = candidates(free, ask);
    // Tightest first: least share left after, then least memory left, then lowest index.
    fits.sort_by_key(|&c| (free[c].share - share, free[c].memory - ask.memory, c));
    if fits.len() < cards {
        return None;
    }
    fits.truncate(cards);
    fits.sort_unstable();
    take(free, &fits, ask);
    Some(fits)
}

/// Exhaustive search for the placement that fits the most asks.
struct Search<'a> {
    asks: &'a [Ask],
    order: &'a [usize],
    best: Placement,
    best_count: usize,
    current: Placement,
    /// Nodes left to visit.
    budget: usize,
}

impl Search<'_> {
    fn run(&mut self, at: usize, count: usize, free: &mut Vec<Free>) {
        if count + (self.order.len() - at) <= self.best_count || self.budget == 0 {
            return; // cannot beat the best found, or out of time
        }
        self.budget -= 1;
        if at == self.order.len() {
            self.best_count = count;
            self.best = self.current.clone();
            return;
        }
        let i = self.order[at];
        let ask = self.asks[i];
        let (cards, _) = ask.shape();
        // Cards with the same free share and memory are interchangeable: try one of each.
        let mut seen = Vec::new();
        let distinct: Vec<usize> = candidates(free, ask)
            .into_iter()
            .filter(|&c| {
                cards > 1 || {
                    let key = free[c];
                    let new = !seen.contains(&key);
                    seen.push(key);
                    new
                }
            })
            .collect();
        for choice in combinations(&distinct, cards) {
            take(free, &choice, ask);
            self.current[i] = Some(choice.clone());
            self.run(at + 1, count + 1, free);
            self.current[i] = None;
            give_back(free, &choice, ask);
            if self.best_count == self.asks.len() {
                return;
            }
        }
        self.run(at + 1, count, free); // leave this ask out
    }
}

/// Every `k`-subset of `items`, in order.
fn combinations(items: &[usize], k: usize) -> Vec<Vec<usize>> {
    if k == 0 {
        return vec![Vec::new()];
    }
    if items.len() < k {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, &first) in items.iter().enumerate() {
        for mut rest in combinations(&items[i + 1..], k - 1) {
            rest.insert(0, first);
            out.push(rest);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const GIB: u64 = 1 << 30;

    fn ask(num_gpus: f64, memory_gib: u64) -> Ask {
        Ask {
            num_gpus,
            memory: memory_gib * GIB,
        }
    }

    /// Shares and memory used on each card never exceed what it has.
    fn check_capacity(memory_free: &[u64], asks: &[Ask], placed: &Placement) {
        let mut share = vec![0u32; memory_free.len()];
        let mut memory = vec![0u64; memory_free.len()];
        for (a, p) in asks.iter().zip(placed) {
            let Some(cards) = p else { continue };
            let (n, s) = a.shape();
            assert_eq!(cards.len(), n, "{a:?} got {cards:?}");
            for &c in cards {
                share[c] += s;
                memory[c] += a.memory;
            }
        }
        for c in 0..memory_free.len() {
            assert!(
                share[c] <= CARD,
                "card {c} holds {} shares: {asks:?} -> {placed:?}",
                share[c]
            );
            assert!(
                memory[c] <= memory_free[c],
                "card {c} over its memory: {asks:?} -> {placed:?}"
            );
        }
    }

    /// The most asks any assignment can fit, by brute force over every choice.
    fn brute_force_max(memory_free: &[u64], asks: &[Ask]) -> usize {
        fn go(free: &mut Vec<Free>, asks: &[Ask], i: usize) -> usize {
            if i == asks.len() {
                return 0;
            }
            let mut best = go(free, asks, i + 1);
            let (cards, _) = asks[i].shape();
            let all: Vec<usize> = (0..free.len()).collect();
            for choice in combinations(&all, cards) {
                let (_, share) = asks[i].shape();
                let ok = choice.iter().all(|&c| {
                    free[c].memory >= asks[i].memory && free[c].share >= share && (cards == 1 || free[c].share == CARD)
                });
                if ok {
                    take(free, &choice, asks[i]);
                    best = best.max(1 + go(free, asks, i + 1));
                    give_back(free, &choice, asks[i]);
                }
            }
            best
        }
        let mut free = memory_free.iter().map(|&m| Free { share: CARD, memory: m }).collect();
        go(&mut free, asks, 0)
    }

    #[test]
    fn four_quarter_replicas_share_one_card() {
        let placed = place(&[80 * GIB], &[ask(0.25, 10); 4]);
        assert!(placed.iter().all(|p| p.as_deref() == Some(&[0][..])));
        let placed = place(&[80 * GIB], &[ask(0.25, 10); 5]);
        assert_eq!(
            placed.iter().filter(|p| p.is_none()).count(),
            1,
            "a fifth quarter does not fit"
        );
        let tenth = place(&[80 * GIB], &[ask(0.1, 1); 10]);
        assert!(tenth.iter().all(Option::is_some), "ten tenths fill a card exactly");
    }

    #[test]
    fn best_fit_keeps_whole_cards_free_and_checks_memory() {
        // 0.5 and 0.25 share one card, leaving the other whole for the 1.0 ask.
        let placed = place(&[80 * GIB, 80 * GIB], &[ask(0.5, 1), ask(0.25, 1), ask(1.0, 1)]);
        assert_eq!(placed[0], placed[1]);
        assert!(placed[2].is_some() && placed[2] != placed[0], "{placed:?}");
        // A card with too little free memory is skipped.
        let placed = place(&[4 * GIB, 40 * GIB], &[ask(0.5, 8)]);
        assert_eq!(placed, vec![Some(vec![1])]);
        assert_eq!(place(&[4 * GIB], &[ask(0.5, 8)]), vec![None]);
        // Two whole cards for one replica.
        assert_eq!(place(&[80 * GIB; 3], &[ask(2.0, 1)]), vec![Some(vec![0, 1])]);
    }

    #[test]
    fn random_placements_never_oversubscribe_and_fit_all_that_can_fit() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let fractions = [0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 1.0];
        for case in 0..400 {
            let cards: Vec<u64> = (0..rng.random_range(1..=3))
                .map(|_| rng.random_range(4..=80) * GIB)
                .collect();
            let asks: Vec<Ask> = (0..rng.random_range(1..=7))
                .map(|_| {
                    let num_gpus = if rng.random_bool(0.15) {
                        2.0
                    } else {
                        fractions[rng.random_range(0..fractions.len())]
                    };
                    ask(num_gpus, rng.random_range(1..=40))
                })
                .collect();
            let placed = place(&cards, &asks);
            check_capacity(&cards, &asks, &placed);
            let count = placed.iter().filter(|p| p.is_some()).count();
            assert_eq!(
                count,
                brute_force_max(&cards, &asks),
                "case {case}: {cards:?} {asks:?} -> {placed:?}"
            );
        }
    }

    #[test]
    fn the_exact_search_stays_bounded_on_many_identical_cards() {
        let placed = place(&[80 * GIB; 16], &[ask(2.0, 1); 10]);
        assert_eq!(placed.iter().filter(|p| p.is_some()).count(), 8);
    }

    #[test]
    fn large_random_placements_never_oversubscribe() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let cards: Vec<u64> = (0..8).map(|_| 80 * GIB).collect();
            let asks: Vec<Ask> = (0..60)
                .map(|_| ask(rng.random_range(1..=20) as f64 / 20.0, rng.random_range(1..=20)))
                .collect();
            check_capacity(&cards, &asks, &place(&cards, &asks));
        }
    }
}
