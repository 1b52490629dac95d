//! Wall-clock time in whole seconds since the Unix epoch, as the ledger, receipts and the API
//! report it (0 if the clock is before 1970).

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
