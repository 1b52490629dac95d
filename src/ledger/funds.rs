//! Admission by funds: a payer may start a call only if its on-chain escrow, minus its usage not
//! yet settled, minus what its calls in flight may still cost, covers the new call's worst case
//! (prompt + `max_tokens` at the adapter's price).
//!
//! What always holds (under one lock): `reserved` is the sum of live `Reservation`s, released on
//! drop; `commit` moves a call's real cost into `unsettled` as its reservation goes (an
//! unsettleable record stays there until it settles after a retry or is `written_off`); `settled`
//! takes a landed batch's debit off both `escrow` and `unsettled` at once, so the available amount
//! never jumps up while a batch lands. `escrow` is the last value read from chain (refreshed by the
//! settlement worker, persisted in the ledger with the time it was read), so admission keeps
//! working while the RPC is down, also across a restart, but only for `max_staleness`: a payer
//! whose deposit was never read, or was read longer ago than that, is refused with a 503 that
//! says so (never a misleading 402).

use crate::clock::unix_now;
use crate::error::{Error, Result};
use alloy::primitives::{Address, U256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Inner {
    escrow: HashMap<Address, U256>,
    unsettled: HashMap<Address, U256>,
    reserved: HashMap<Address, U256>,
    /// When each escrow was read from chain (unix seconds).
    read_at: HashMap<Address, u64>,
}

#[derive(Default)]
pub struct Funds {
    inner: Mutex<Inner>,
    /// Longest age of a deposit reading admission trusts (seconds); `None` = no bound.
    max_staleness: Option<u64>,
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
    /// Funds with `escrow` read just now and no staleness bound.
    pub fn new(escrow: HashMap<Address, U256>, unsettled: HashMap<Address, U256>) -> Arc<Self> {
        let now = unix_now();
        let escrow = escrow.into_iter().map(|(p, e)| (p, (e, now))).collect();
        Self::restored(escrow, unsettled, None)
    }

    /// Funds from the ledger: each payer's last known escrow with the time it was read.
    pub fn restored(
        escrow: HashMap<Address, (U256, u64)>,
        unsettled: HashMap<Address, U256>,
        max_staleness: Option<std::time::Duration>,
    ) -> Arc<Self> {
        Arc::new(Funds {
            inner: Mutex::new(Inner {
                read_at: escrow.iter().map(|(p, (_, t))| (*p, *t)).collect(),
                escrow: escrow.into_iter().map(|(p, (e, _))| (p, e)).collect(),
                unsettled,
                reserved: HashMap::new(),
            }),
            max_staleness: max_staleness.map(|d| d.as_secs()),
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

    /// Holds `max_cost` for a call of `payer`, or fails with `Error::InsufficientFunds` (402), or
    /// `Error::Unavailable` (503) when its deposit is unknown or older than `max_staleness`.
    pub fn reserve(self: &Arc<Self>, payer: Address, max_cost: U256) -> Result<Reservation> {
        let mut g = self.lock();
        self.check_fresh(&g, payer)?;
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

    fn check_fresh(&self, g: &Inner, payer: Address) -> Result<()> {
        let Some(read_at) = g.read_at.get(&payer) else {
            return Err(Error::Unavailable(format!(
                "the deposit of payer {payer} is not known yet: the chain has not been reachable since this server started; retry later"
            )));
        };
        let age = unix_now().saturating_sub(*read_at);
        match self.max_staleness {
            Some(max) if age > max => Err(Error::Unavailable(format!(
                "the last known deposit of payer {payer} was read {age} s ago, more than the {max} s allowed (--deposit-max-staleness-secs) while the chain is unreachable; retry later"
            ))),
            _ => Ok(()),
        }
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

    /// A batch recorded as landed turned out not to be on chain: its debit of `payer` is owed
    /// again (the escrow is re-read from chain after the outage that revealed it).
    pub fn reopened(&self, payer: Address, debit: U256) {
        let mut g = self.lock();
        *g.unsettled.entry(payer).or_default() += debit;
    }

    /// An unsettleable record of `payer` worth `amount` was written off: no longer owed.
    pub fn written_off(&self, payer: Address, amount: U256) {
        let mut g = self.lock();
        let u = g.unsettled.entry(payer).or_default();
        *u = u.saturating_sub(amount);
    }

    /// The escrow read from chain just now.
    pub fn set_escrow(&self, payer: Address, escrow: U256) {
        let mut g = self.lock();
        g.escrow.insert(payer, escrow);
        g.read_at.insert(payer, unix_now());
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
        assert!(matches!(
            f.reserve(unknown, U256::from(1u64)),
            Err(Error::Unavailable(_))
        ));
    }

    #[test]
    fn a_stale_deposit_is_trusted_only_within_the_bound() {
        let (p, q) = (Address::repeat_byte(1), Address::repeat_byte(2));
        let now = unix_now();
        let f = Funds::restored(
            HashMap::from([
                (p, (U256::from(100u64), now - 5)),
                (q, (U256::from(100u64), now - 50)),
            ]),
            HashMap::from([(p, U256::from(30u64))]),
            Some(std::time::Duration::from_secs(20)),
        );
        let held = f.reserve(p, U256::from(70u64)).unwrap();
        assert!(matches!(
            f.reserve(p, U256::from(1u64)),
            Err(Error::InsufficientFunds { .. })
        ));
        assert!(matches!(
            f.reserve(q, U256::from(1u64)),
            Err(Error::Unavailable(_))
        ));
        drop(held);
        assert!(f.reserve(p, U256::from(70u64)).is_ok(), "released on drop");
        f.set_escrow(q, U256::from(100u64));
        assert!(f.reserve(q, U256::from(1u64)).is_ok());
    }
}
