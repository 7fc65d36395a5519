//! Page-view analytics with minute buckets rolled up into hours by a tick, and a module-wide
//! daily counter in a global PState.
//!
//! - depot `views` (`{"page": "home", "at": MS}`, hash-partitioned by `page`);
//! - tick depot `minute-ticks`: the host appends a [`Tick`] to every partition every minute;
//! - PStates `minutes` and `hours` (`map<string, map<int, int>>`: page → bucket start (ms) →
//!   views), partitioned by page; the **global** PState `daily` (`map<int, int>`: day start
//!   (ms) → views of every page), stored on partition 0;
//! - stream topology `views`: a view increments its page's minute bucket and hops to the
//!   global partition to count its day; a tick moves every bucket of an hour that ended
//!   before the tick's time into `hours` (the tick's time comes from the log, so a replay
//!   rolls up the same buckets).

use serde::Deserialize;
use sluice_sdk::{
    AckReturn, Ctx, Definition, Depot, Hop, HopTarget, Module, PStateDef, Partitioner, Path,
    Result, Retention, Tick,
};
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct View {
    page: String,
    at: i64,
}

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

const VIEWS: Depot<View> = Depot::new("views");
const MINUTE_TICKS: Depot<Tick> = Depot::new("minute-ticks");
const MINUTES: PStateDef<String, BTreeMap<i64, i64>> = PStateDef::new("minutes");
const HOURS: PStateDef<String, BTreeMap<i64, i64>> = PStateDef::new("hours");
const DAILY: PStateDef<i64, i64> = PStateDef::new("daily");
const COUNT_DAY: Hop<i64> = Hop::new("count-day");

struct Analytics;

impl Module for Analytics {
    fn define(m: &mut Definition) {
        m.depot(VIEWS, Partitioner::hash("page"));
        m.tick_depot(MINUTE_TICKS, MINUTE_MS as u64);
        // A day of ticks is plenty (the newest is kept whatever the bound).
        m.retention(MINUTE_TICKS, Retention::records(1_440));
        m.pstate_of(MINUTES);
        m.pstate_of(HOURS);
        m.global_pstate_of(DAILY);
        m.stream_topology("views")
            .on(VIEWS, view)
            .on(MINUTE_TICKS, roll_up)
            .hop_handler(COUNT_DAY, count_day);
    }
}

/// Counts a view in its minute bucket; its day is counted on the global partition.
fn view(ctx: &Ctx, v: View) -> Result<AckReturn<i64>> {
    let minute = v.at.div_euclid(MINUTE_MS) * MINUTE_MS;
    ctx.pstate(MINUTES)
        .increment_at(&Path::key(&v.page).then_key(&minute), 1)?;
    ctx.hop(
        HopTarget::global(),
        COUNT_DAY,
        &(v.at.div_euclid(DAY_MS) * DAY_MS),
    )?;
    Ok(AckReturn(minute))
}

fn count_day(ctx: &Ctx, day: i64) -> Result<()> {
    ctx.pstate(DAILY).increment(&day, 1)
}

/// Moves the minute buckets of every hour that ended by the tick's time into `hours`.
fn roll_up(ctx: &Ctx, tick: Tick) -> Result<AckReturn<u64>> {
    let hour_now = (tick.time as i64).div_euclid(HOUR_MS) * HOUR_MS;
    let minutes = ctx.pstate(MINUTES);
    let hours = ctx.pstate(HOURS);
    let pages: Vec<String> = minutes.select(&Path::new().map_keys())?;
    let mut moved = 0;
    for page in pages {
        let Some(buckets) = minutes.get(&page)? else {
            continue;
        };
        for (minute, n) in buckets.range(..hour_now) {
            let hour = minute.div_euclid(HOUR_MS) * HOUR_MS;
            hours.increment_at(&Path::key(&page).then_key(&hour), *n)?;
            minutes.remove_at(&Path::key(&page).then_key(minute))?;
            moved += 1;
        }
        if minutes.count(&page)? == 0 {
            minutes.remove(&page)?;
        }
    }
    Ok(AckReturn(moved))
}

sluice_sdk::export_module!(Analytics);
