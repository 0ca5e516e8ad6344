//! Prompt prefixes reused across requests, as vLLM's automatic prefix caching and llama.cpp's
//! prompt cache do: the KV cache of a finished sequence is kept, keyed by the tokens it holds,
//! and a new request whose prompt starts with some of them copies their keys and values
//! instead of running them through the model again.
//!
//! Requests to one model share a lot of prompt: the chat template's system turn, a plugin's
//! instructions, the earlier turns of a conversation, a retried generation's task. Their
//! prefill is the costliest part of a short request, and on a CPU it competes with every other
//! sequence's decode steps.
//!
//! Reuse is exact: a position's keys and values depend only on the tokens up to it, and every
//! architecture computes a token's row the same whatever else shares its pass, so a copied
//! prefix holds the very bits a fresh prefill would have written (tested in
//! `tests/batching.rs`). Entries are bounded by bytes; the least recently used go first. Caches a
//! device keeps (the CUDA backend's) are not kept here.

use super::kv_cache::KvCache;

/// Finished sequences' keys and values, by the tokens they hold.
#[derive(Debug)]
pub struct PrefixCache {
    /// Most bytes of keys and values kept.
    budget: usize,
    used: usize,
    /// Incremented on every use; an entry's last use orders eviction.
    clock: u64,
    entries: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    tokens: Vec<u32>,
    cache: KvCache,
    last_used: u64,
}

impl PrefixCache {
    /// A cache keeping at most `budget` bytes of keys and values (0 keeps nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            entries: Vec::new(),
        }
    }

    /// Bytes of keys and values held.
    pub fn bytes(&self) -> usize {
        self.used
    }

    /// Fill the empty `cache` of a new sequence with the longest kept prefix of `prompt` and
    /// return its length: the tokens the sequence no longer has to run. At least the prompt's
    /// last token is left to run, since its logits choose the first generated token.
    pub fn reuse(&mut self, prompt: &[u32], cache: &mut KvCache) -> usize {
        let wanted = prompt.len().saturating_sub(1);
        let Some((best, shared)) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt).min(wanted)))
            .max_by_key(|&(i, shared)| (shared, self.entries[i].last_used))
        else {
            return 0;
        };
        if shared == 0 || !cache.copy_prefix(&self.entries[best].cache, shared) {
            return 0;
        }
        self.clock += 1;
        self.entries[best].last_used = self.clock;
        shared
    }

    /// Keep the committed positions of a finished sequence's `cache`, which hold `tokens`.
    /// Kept entries that `tokens` extends are dropped (the new one serves their requests too);
    /// nothing is added when a kept entry already extends `tokens`, or when it alone would
    /// exceed the budget.
    pub fn keep(&mut self, tokens: &[u32], cache: &KvCache) {
        let tokens = &tokens[..cache.len().min(tokens.len())];
        // Sized before anything is copied: with no room (or a device cache) nothing is.
        let size = tokens.len() * cache.position_bytes();
        if size == 0 || size > self.budget {
            return;
        }
        self.clock += 1;
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.tokens.starts_with(tokens))
        {
            e.last_used = self.clock;
            return;
        }
        // The copy is sized to what it holds; the sequence's own cache was sized for a whole
        // answer.
        let Some(snapshot) = cache.snapshot(tokens.len()) else {
            return;
        };
        let mut freed = 0;
        self.entries.retain(|e| {
            let covered = tokens.starts_with(&e.tokens);
            if covered {
                freed += e.cache.bytes();
            }
            !covered
        });
        self.used -= freed;
        while self.used + size > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(i, _)| i)
            else {
                break;
            };
            self.used -= self.entries.swap_remove(oldest).cache.bytes();
        }
        self.used += size;
        self.entries.push(Entry {
            tokens: tokens.to_vec(),
            cache: snapshot,
            last_used: self.clock,
        });
    }
}

/// How many leading tokens `a` and `b` share.
fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::kv_cache::{KvPrecision, LayerView};

    /// A one-layer cache of width 2 whose position `p` holds key and value `tokens[p]`.
    fn cache_of(tokens: &[u32]) -> KvCache {
        let mut cache = KvCache::new(1, 2, 2, tokens.len() + 4, KvPrecision::F32);
        let rows: Vec<f32> = tokens.iter().flat_map(|&t| [t as f32; 2]).collect();
        cache.append(0, &rows, &rows);
        cache.commit(tokens.len());
        cache
    }

    /// The values a cache holds at its committed positions (one per position).
    fn held(cache: &KvCache) -> Vec<u32> {
        let LayerView::F32(layer) = cache.layer(0) else {
            panic!("f32 cache");
        };
        (0..cache.len())
            .map(|p| layer.value(0, p)[0] as u32)
            .collect()
    }

    fn fresh() -> KvCache {
        KvCache::new(1, 2, 2, 16, KvPrecision::F32)
    }

    #[test]
    fn the_longest_shared_prefix_is_copied_leaving_the_last_prompt_token() {
        let mut prefixes = PrefixCache::new(1 << 20);
        prefixes.keep(&[1, 2, 3, 4, 5], &cache_of(&[1, 2, 3, 4, 5]));
        prefixes.keep(&[1, 2, 9], &cache_of(&[1, 2, 9]));

        let mut cache = fresh();
        assert_eq!(prefixes.reuse(&[1, 2, 3, 7, 8], &mut cache), 3);
        assert_eq!(held(&cache), [1, 2, 3]);

        // The whole prompt is kept, but its last token must still run.
        let mut cache = fresh();
        assert_eq!(prefixes.reuse(&[1, 2, 3, 4, 5], &mut cache), 4);
        assert_eq!(held(&cache), [1, 2, 3, 4]);

        // Nothing shared, a one-token prompt: nothing copied.
        let mut cache = fresh();
        assert_eq!(prefixes.reuse(&[8, 1, 2], &mut cache), 0);
        assert_eq!(prefixes.reuse(&[1], &mut cache), 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn only_the_positions_the_tokens_name_are_kept_and_extensions_replace_prefixes() {
        let mut prefixes = PrefixCache::new(1 << 20);
        // A sequence whose cache holds one position more than the tokens given: only two kept.
        prefixes.keep(&[1, 2], &cache_of(&[1, 2, 3]));
        let two = prefixes.bytes();
        assert_eq!(two, 2 * 2 * 2 * 4);
        // Extended by a later sequence: the longer one replaces it.
        prefixes.keep(&[1, 2, 3, 4], &cache_of(&[1, 2, 3, 4]));
        assert_eq!(prefixes.entries.len(), 1);
        assert_eq!(prefixes.bytes(), 2 * two);
        // A prefix of a kept entry adds nothing.
        prefixes.keep(&[1, 2, 3], &cache_of(&[1, 2, 3]));
        assert_eq!(prefixes.entries.len(), 1);
        assert_eq!(prefixes.bytes(), 2 * two);
    }

    #[test]
    fn the_least_recently_used_entry_goes_when_the_budget_is_full() {
        // Room for two entries of three positions (48 bytes each).
        let mut prefixes = PrefixCache::new(2 * 48);
        prefixes.keep(&[1, 1, 1], &cache_of(&[1, 1, 1]));
        prefixes.keep(&[2, 2, 2], &cache_of(&[2, 2, 2]));
        // Using the first makes the second the oldest.
        assert_eq!(prefixes.reuse(&[1, 1, 1, 5], &mut fresh()), 3);
        prefixes.keep(&[3, 3, 3], &cache_of(&[3, 3, 3]));
        assert_eq!(prefixes.bytes(), 2 * 48);
        assert_eq!(prefixes.reuse(&[2, 2, 2, 5], &mut fresh()), 0);
        assert_eq!(prefixes.reuse(&[1, 1, 1, 5], &mut fresh()), 3);
        assert_eq!(prefixes.reuse(&[3, 3, 3, 5], &mut fresh()), 3);
        // An entry larger than the whole budget is not kept; a zero budget keeps nothing.
        prefixes.keep(&[4; 7], &cache_of(&[4; 7]));
        assert_eq!(prefixes.reuse(&[4; 8], &mut fresh()), 0);
        let mut none = PrefixCache::new(0);
        none.keep(&[1, 1, 1], &cache_of(&[1, 1, 1]));
        assert_eq!(none.bytes(), 0);
        assert_eq!(none.reuse(&[1, 1, 1, 1], &mut fresh()), 0);
    }
}
