//! Admission by funds: a payer may start a call only if its on-chain escrow, minus its usage not
//! yet settled, minus what its calls in flight may still cost, covers the new call's worst case
//! (prompt + `max_tokens` at the adapter's price).
//!
//! What always holds (under one lock): `reserved` is the sum of live `Reservation`s, released on
//! drop; `commit` moves a call's real cost into `unsettled` as its reservation goes; `settled`
//! takes a landed batch's debit off both `escrow` and `unsettled` at once, so the available amount
//! never jumps up while a batch lands. `escrow` is the last value read from chain (refreshed by the
//! settlement worker, persisted in the ledger), so admission keeps working while the RPC is down.

use crate::error::{Error, Result};
use alloy::primitives::{Address, U256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Inner {
    escrow: HashMap<Address, U256>,
    unsettled: HashMap<Address, U256>,
    reserved: HashMap<Address, U256>,
}

#[derive(Default)]
pub struct Funds {
    inner: Mutex<Inner>,
}

/// Worst-case cost of a call in flight, held against its payer until committed or dropped.
pub struct Reservation {
    funds: Arc<Funds>,
    payer: Address,
    amount: U256,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut g = self.funds.lock();
        let r = g.reserved.entry(self.payer).or_default();
        *r = r.saturating_sub(self.amount);
    }
}

impl Funds {
    pub fn new(escrow: HashMap<Address, U256>, unsettled: HashMap<Address, U256>) -> Arc<Self> {
        Arc::new(Funds {
            inner: Mutex::new(Inner {
                escrow,
                unsettled,
                reserved: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Escrow minus unsettled usage minus reservations (zero when negative).
    pub fn available(&self, payer: Address) -> U256 {
        let g = self.lock();
        Self::available_in(&g, payer)
    }

    fn available_in(g: &Inner, payer: Address) -> U256 {
        let get = |m: &HashMap<Address, U256>| m.get(&payer).copied().unwrap_or_default();
        get(&g.escrow)
            .saturating_sub(get(&g.unsettled))
            .saturating_sub(get(&g.reserved))
    }

    /// Holds `max_cost` for a call of `payer`, or fails with `Error::InsufficientFunds`.
    pub fn reserve(self: &Arc<Self>, payer: Address, max_cost: U256) -> Result<Reservation> {
        let mut g = self.lock();
        let available = Self::available_in(&g, payer);
        if available < max_cost {
            return Err(Error::InsufficientFunds {
                payer: payer.to_string(),
                available: available.to_string(),
                needed: max_cost.to_string(),
            });
        }
        *g.reserved.entry(payer).or_default() += max_cost;
        Ok(Reservation {
            funds: self.clone(),
            payer,
            amount: max_cost,
        })
    }

    /// A call was recorded at `cost`: count it as unsettled and release its reservation.
    pub fn commit(&self, reservation: Reservation, cost: U256) {
        {
            let mut g = self.lock();
            *g.unsettled.entry(reservation.payer).or_default() += cost;
        }
        drop(reservation);
    }

    /// A batch landed debiting `debit` from `payer`.
    pub fn settled(&self, payer: Address, debit: U256) {
        let mut g = self.lock();
        let e = g.escrow.entry(payer).or_default();
        *e = e.saturating_sub(debit);
        let u = g.unsettled.entry(payer).or_default();
        *u = u.saturating_sub(debit);
    }

    /// The escrow read from chain.
    pub fn set_escrow(&self, payer: Address, escrow: U256) {
        self.lock().escrow.insert(payer, escrow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_cap_spend_and_release_on_drop() {
        let p = Address::repeat_byte(1);
        let f = Funds::new(HashMap::from([(p, U256::from(100u64))]), HashMap::new());
        let a = f.reserve(p, U256::from(60u64)).unwrap();
        assert!(matches!(
            f.reserve(p, U256::from(50u64)),
            Err(Error::InsufficientFunds { .. })
        ));
        f.commit(a, U256::from(10u64));
        assert_eq!(f.available(p), U256::from(90u64));
        let b = f.reserve(p, U256::from(50u64)).unwrap();
        drop(b);
        assert_eq!(f.available(p), U256::from(90u64));
        f.settled(p, U256::from(10u64));
        assert_eq!(f.available(p), U256::from(90u64));
        let unknown = Address::repeat_byte(2);
        assert!(f.reserve(unknown, U256::from(1u64)).is_err());
    }
}
