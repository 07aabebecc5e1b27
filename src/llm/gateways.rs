//! A role's gateways, one per model of its `ModelSet`, by name.
//!
//! Why a set rather than one gateway: a role may hold a cheap and a strong model. Each keeps
//! its own backend, prices, concurrency bound and caps, and all share the run's cache and
//! total budget, so choosing a model per call changes nothing else about how calls are made.

use std::sync::Arc;

use anyhow::Result;

use super::{BackendFactory, Budget, CallStore, Gateway};
use crate::config::ModelSet;
use crate::types::{Role, Usage};

pub struct Gateways {
    entries: Vec<(String, Gateway)>,
}

impl Gateways {
    /// One gateway per model of `set`, each with its own caps, all sharing `cache` and the
    /// run's `budget`.
    pub fn build(
        role: Role,
        set: &ModelSet,
        factory: &BackendFactory,
        cache: Option<Arc<dyn CallStore>>,
        budget: Arc<Budget>,
    ) -> Result<Self> {
        let mut entries = Vec::with_capacity(set.len());
        for (name, cfg) in set.iter() {
            let key = set.key(role.as_str(), name);
            let backend = factory.build(cfg, &key["models.".len()..])?;
            let gateway = Gateway::new(role, backend, cfg, cache.clone(), budget.clone())
                .with_own_budget(Budget::for_model(&key, cfg));
            entries.push((name.to_string(), gateway));
        }
        Ok(Self { entries })
    }

    /// Gateways already built, by name, the first the default (tests, tools).
    pub fn from_entries(entries: Vec<(String, Gateway)>) -> Self {
        assert!(!entries.is_empty(), "a role has at least one model");
        Self { entries }
    }

    /// The first model's gateway: what the role uses when nothing chooses.
    pub fn primary(&self) -> &Gateway {
        &self.entries[0].1
    }

    pub fn get(&self, name: &str) -> Option<&Gateway> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, g)| g)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Gateway)> {
        self.entries.iter().map(|(n, g)| (n.as_str(), g))
    }

    pub fn names(&self) -> Vec<String> {
        self.entries.iter().map(|(n, _)| n.clone()).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The same gateways with totals of their own (`Gateway::scoped`).
    pub fn scoped(&self) -> Gateways {
        Gateways {
            entries: self.entries.iter().map(|(n, g)| (n.clone(), g.scoped())).collect(),
        }
    }

    /// Totals over every model.
    pub fn totals(&self) -> Usage {
        let mut all = Usage::default();
        for (_, g) in &self.entries {
            all.merge(&g.totals());
        }
        all
    }

    pub fn flush_cache(&self) {
        // One cache serves every model of a role: flushing it once writes all.
        if let Some((_, g)) = self.entries.first() {
            g.flush_cache();
        }
    }

    pub fn incidents(&self) -> Vec<serde_json::Value> {
        self.entries.iter().flat_map(|(_, g)| g.incidents()).collect()
    }

    /// Why a model can answer nothing any more, naming it when the role has several.
    pub fn failure(&self) -> Option<String> {
        let several = self.entries.len() > 1;
        self.entries.iter().find_map(|(n, g)| {
            g.failure()
                .map(|why| if several { format!("model {n:?}: {why}") } else { why })
        })
    }
}
