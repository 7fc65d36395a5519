//! A Mastodon-like social backend: follows, posts fanned out to home timelines, profiles.
//!
//! - Depot `follows` (`{"follower": "ann", "followee": "bob", "op": "follow" | "unfollow"}`,
//!   `op` defaults to `follow`; hash by `follower`), topology `follows`: updates
//!   `following[follower]` on the follower's partition, then hops to the followee's partition to
//!   update `followers[followee]`. Following yourself is ignored.
//! - Depot `posts` (`{"author": "bob", "id": "p1", "text": "hi", "time": 1700000000}`; hash by
//!   `author`), topology `posts`: stores the post in `posts-by-author[author]` and fans it out
//!   to the home timeline of every account following the author at that moment. Followers are
//!   read `FANOUT_CHUNK_FOLLOWERS` at a time; each chunk is grouped by the followers' partitions
//!   ([`sluice_sdk::group_by_partition`]) into one `deliver` hop per partition, and the next chunk
//!   is a `fan-out` hop back to the author's partition, so a 100,000-follower post is spread
//!   over many short handler calls with other work interleaved. The post's ack-return value is
//!   the number of timelines it is delivered to. A post whose `(time, id)` the author already
//!   has is not delivered again.
//! - Depot `profiles` (`{"account": "bob", "name": "Bob", "bio": "..."}`, fields optional; hash
//!   by `account`), topology `profiles`: sets the given fields.
//! - Queries: `timeline` (`{"account", "limit"?, "before"?}` → `{"posts": [...], "next"}`,
//!   newest first; pass `next` back as `before` for the following page, or a time to start
//!   strictly before it), `profile` (`{"account"}` → the profile's fields and its `followers`,
//!   `following` and `posts` counts), `who-to-follow` (`{"account", "limit"?}` → accounts my
//!   followees follow that I do not, `[{"account", "followed_by"}]`, most shared first).
//!
//! Exactly the followers at the time of posting: `followers[author][follower]` holds the
//! number of posts the author had when the follow arrived on the author's partition; a post
//! that was the author's `seq`-th is delivered only to followers whose number is `<= seq`, so a
//! follow that lands between two chunks of a long fanout does not receive the post. Unfollows
//! remove the entry, so they stop delivery at once (also for chunks not yet sent).
//!
//! Timelines hold the whole post (one range read answers a page) keyed by `[time, author, id]`
//! and are trimmed to the newest `TIMELINE_ENTRIES_MAX` entries on every delivery. Nothing
//! reads a clock: times come with the posts, so replays compute the same state.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sluice_sdk::{
    group_by_partition, AckReturn, Ctx, Definition, Depot, Error, Hop, HopTarget, KeyRange, Module,
    PStateDef, Partitioner, QueryCtx, Result, Schema, Subindexed,
};

/// A home timeline keeps this many newest entries.
pub const TIMELINE_ENTRIES_MAX: u64 = 800;
/// Followers read (and delivered to) per handler call of a fanout.
pub const FANOUT_CHUNK_FOLLOWERS: u64 = 2_000;
/// Default and largest page of the `timeline` query.
const TIMELINE_PAGE_DEFAULT: u64 = 20;
/// `who-to-follow`: how many of my followees are examined, how many of each one's followees
/// are counted, and how many of my own followees are excluded at most.
const WHO_TO_FOLLOW_FOLLOWEES_MAX: u64 = 500;
const WHO_TO_FOLLOW_PER_FOLLOWEE_MAX: u64 = 1_000;
const WHO_TO_FOLLOW_EXCLUDED_MAX: u64 = 10_000;
const WHO_TO_FOLLOW_DEFAULT: usize = 10;
const WHO_TO_FOLLOW_MAX: usize = 100;

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum FollowOp {
    #[default]
    Follow,
    Unfollow,
}

#[derive(Deserialize)]
struct Follow {
    follower: String,
    followee: String,
    #[serde(default)]
    op: FollowOp,
}

/// A follow edge carried to the followee's partition.
#[derive(Serialize, Deserialize)]
struct Edge {
    follower: String,
    followee: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Schema)]
pub struct Post {
    pub author: String,
    pub id: String,
    pub text: String,
    pub time: i64,
}

/// A profile's fields, each optional: an update sets those it has.
#[derive(Serialize, Deserialize, Default, Schema)]
struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bio: Option<String>,
}

#[derive(Deserialize)]
struct ProfileUpdate {
    account: String,
    name: Option<String>,
    bio: Option<String>,
}

/// The next chunk of a fanout: followers after `after`, for the author's `seq`-th post.
#[derive(Serialize, Deserialize)]
struct FanOut {
    post: Post,
    seq: u64,
    after: String,
}

/// One post for the timelines of `to`, all on the hop's target partition.
#[derive(Serialize, Deserialize)]
struct Delivery {
    post: Post,
    to: Vec<String>,
}

/// A post's key among its author's: `[time, id]`, so posts sort oldest first.
type PostKey = (i64, String);
/// A timeline entry's key: `[time, author, id]`.
type TimelineKey = (i64, String, String);

const FOLLOWS: Depot<Follow> = Depot::new("follows");
const POSTS: Depot<Post> = Depot::new("posts");
const PROFILE_UPDATES: Depot<ProfileUpdate> = Depot::new("profiles");
/// followee -> follower -> how many posts the followee had when the follow arrived.
const FOLLOWERS: PStateDef<String, Subindexed<BTreeMap<String, u64>>> = PStateDef::new("followers");
/// follower -> followees
const FOLLOWING: PStateDef<String, Subindexed<BTreeSet<String>>> = PStateDef::new("following");
/// author -> post key -> post
const POSTS_BY_AUTHOR: PStateDef<String, Subindexed<BTreeMap<PostKey, Post>>> =
    PStateDef::new("posts-by-author");
/// account -> timeline key -> post, the newest `TIMELINE_ENTRIES_MAX`
const HOME_TIMELINES: PStateDef<String, Subindexed<BTreeMap<TimelineKey, Post>>> =
    PStateDef::new("home-timelines");
const PROFILES: PStateDef<String, Profile> = PStateDef::new("profiles");
const ADD_FOLLOWER: Hop<Edge> = Hop::new("add-follower");
const REMOVE_FOLLOWER: Hop<Edge> = Hop::new("remove-follower");
const FAN_OUT: Hop<FanOut> = Hop::new("fan-out");
const DELIVER: Hop<Delivery> = Hop::new("deliver");

struct Social;

impl Module for Social {
    fn define(m: &mut Definition) {
        m.depot(FOLLOWS, Partitioner::hash("follower"));
        m.depot(POSTS, Partitioner::hash("author"));
        m.depot(PROFILE_UPDATES, Partitioner::hash("account"));
        m.pstate_of(FOLLOWERS);
        m.pstate_of(FOLLOWING);
        m.pstate_of(POSTS_BY_AUTHOR);
        m.pstate_of(HOME_TIMELINES);
        m.pstate_of(PROFILES);
        m.stream_topology("follows")
            .on(FOLLOWS, on_follow)
            .hop_handler(ADD_FOLLOWER, add_follower)
            .hop_handler(REMOVE_FOLLOWER, remove_follower);
        m.stream_topology("posts")
            .on(POSTS, on_post)
            .hop_handler(FAN_OUT, fan_out)
            .hop_handler(DELIVER, deliver);
        m.stream_topology("profiles")
            .on(PROFILE_UPDATES, on_profile);
        m.query("timeline", timeline);
        m.query("profile", profile);
        m.query("who-to-follow", who_to_follow);
    }
}

fn on_follow(ctx: &Ctx, f: Follow) -> Result<()> {
    if f.follower == f.followee {
        return Ok(());
    }
    let following = ctx.pstate(FOLLOWING);
    let hop = if f.op == FollowOp::Follow {
        following.insert(&f.follower, &f.followee)?;
        ADD_FOLLOWER
    } else {
        following.remove_element(&f.follower, &f.followee)?;
        REMOVE_FOLLOWER
    };
    let edge = Edge {
        follower: f.follower,
        followee: f.followee,
    };
    ctx.hop(HopTarget::Key(&edge.followee), hop, &edge)
}

fn add_follower(ctx: &Ctx, e: Edge) -> Result<()> {
    let followers = ctx.pstate(FOLLOWERS);
    if followers.has_entry(&e.followee, &e.follower)? {
        return Ok(()); // already following: keep the original position
    }
    let posts = ctx.pstate(POSTS_BY_AUTHOR).count(&e.followee)?;
    followers.set_entry(&e.followee, &e.follower, &posts)
}

fn remove_follower(ctx: &Ctx, e: Edge) -> Result<()> {
    ctx.pstate(FOLLOWERS).remove_entry(&e.followee, &e.follower)
}

fn on_post(ctx: &Ctx, post: Post) -> Result<AckReturn<u64>> {
    if post.id.is_empty() {
        return Err(Error::new("invalid-post", "a post needs a non-empty `id`"));
    }
    let posts = ctx.pstate(POSTS_BY_AUTHOR);
    let key = (post.time, post.id.clone());
    if posts.has_entry(&post.author, &key)? {
        return Ok(AckReturn(0));
    }
    let seq = posts.count(&post.author)?;
    posts.set_entry(&post.author, &key, &post)?;
    // Everyone following now has a position <= seq: this many timelines receive the post.
    let recipients = ctx.pstate(FOLLOWERS).count(&post.author)?;
    fan_out_chunk(ctx, post, seq, None)?;
    Ok(AckReturn(recipients))
}

fn fan_out(ctx: &Ctx, f: FanOut) -> Result<()> {
    fan_out_chunk(ctx, f.post, f.seq, Some(&f.after))
}

/// Delivers `post` to the next chunk of the author's followers (after `after`), one hop per
/// target partition, and continues with a hop to itself if the chunk was full.
fn fan_out_chunk(ctx: &Ctx, post: Post, seq: u64, after: Option<&str>) -> Result<()> {
    let mut range = KeyRange::all().limit(FANOUT_CHUNK_FOLLOWERS);
    if let Some(a) = after {
        range = range.after(a);
    }
    let chunk = ctx.pstate(FOLLOWERS).range(&post.author, range)?;
    let current = chunk.iter().filter(|(_, since)| *since <= seq);
    let recipients = current.map(|(follower, _)| follower.clone());
    for (p, to) in group_by_partition(recipients, ctx.record().partitions)? {
        let d = Delivery {
            post: post.clone(),
            to,
        };
        ctx.hop(HopTarget::partition(p), DELIVER, &d)?;
    }
    if chunk.len() as u64 == FANOUT_CHUNK_FOLLOWERS {
        let after = chunk.last().map(|(f, _)| f.clone()).unwrap_or_default();
        let author = post.author.clone();
        ctx.hop(
            HopTarget::Key(&author),
            FAN_OUT,
            &FanOut { post, seq, after },
        )?;
    }
    Ok(())
}

fn deliver(ctx: &Ctx, d: Delivery) -> Result<()> {
    let timelines = ctx.pstate(HOME_TIMELINES);
    let key = (d.post.time, d.post.author.clone(), d.post.id.clone());
    for account in &d.to {
        timelines.set_entry(account, &key, &d.post)?;
        timelines.keep_last(account, TIMELINE_ENTRIES_MAX)?;
    }
    Ok(())
}

fn on_profile(ctx: &Ctx, p: ProfileUpdate) -> Result<()> {
    if p.name.is_none() && p.bio.is_none() {
        return Ok(());
    }
    let fields = Profile {
        name: p.name,
        bio: p.bio,
    };
    ctx.pstate(PROFILES).merge(&p.account, &fields)
}

/// Where a timeline page ends: before this time, or before this entry (a page's `next`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Before {
    Time(i64),
    Entry(TimelineKey),
}

#[derive(Deserialize)]
struct TimelineArgs {
    account: String,
    limit: Option<u64>,
    before: Option<Before>,
}

#[derive(Serialize)]
struct TimelinePage {
    posts: Vec<Post>,
    /// The last entry's key, to pass as `before` for the next page; `null` on the last page.
    next: Option<TimelineKey>,
}

fn timeline(q: &QueryCtx, args: TimelineArgs) -> Result<TimelinePage> {
    let limit = args
        .limit
        .unwrap_or(TIMELINE_PAGE_DEFAULT)
        .clamp(1, TIMELINE_ENTRIES_MAX);
    let mut range = KeyRange::all().reverse().limit(limit);
    range = match &args.before {
        None => range,
        // `[t]` sorts before every `[t, author, id]`: strictly older than `t`.
        Some(Before::Time(t)) => range.to(&[*t]),
        Some(Before::Entry(k)) => range.to(k),
    };
    let entries = q.pstate(HOME_TIMELINES).range(&args.account, range)?;
    let next = match entries.last() {
        Some((key, _)) if entries.len() as u64 == limit => Some(key.clone()),
        _ => None,
    };
    let posts = entries.into_iter().map(|(_, p)| p).collect();
    Ok(TimelinePage { posts, next })
}

#[derive(Deserialize)]
struct AccountArgs {
    account: String,
}

#[derive(Serialize)]
struct ProfileView {
    account: String,
    name: Option<String>,
    bio: Option<String>,
    followers: u64,
    following: u64,
    posts: u64,
}

fn profile(q: &QueryCtx, args: AccountArgs) -> Result<ProfileView> {
    let fields = q.pstate(PROFILES).get(&args.account)?.unwrap_or_default();
    Ok(ProfileView {
        followers: q.pstate(FOLLOWERS).count(&args.account)?,
        following: q.pstate(FOLLOWING).count(&args.account)?,
        posts: q.pstate(POSTS_BY_AUTHOR).count(&args.account)?,
        name: fields.name,
        bio: fields.bio,
        account: args.account,
    })
}

#[derive(Deserialize)]
struct WhoToFollowArgs {
    account: String,
    limit: Option<usize>,
}

#[derive(Serialize)]
struct Suggestion {
    account: String,
    /// How many of the asking account's followees follow this one.
    followed_by: u64,
}

fn who_to_follow(q: &QueryCtx, args: WhoToFollowArgs) -> Result<Vec<Suggestion>> {
    let limit = args
        .limit
        .unwrap_or(WHO_TO_FOLLOW_DEFAULT)
        .clamp(1, WHO_TO_FOLLOW_MAX);
    let following = q.pstate(FOLLOWING);
    // Each read goes to the partition owning that account's entry.
    let followees = |account: &str, max: u64| following.range(account, KeyRange::all().limit(max));
    let mine: BTreeSet<String> = followees(&args.account, WHO_TO_FOLLOW_EXCLUDED_MAX)?
        .into_iter()
        .collect();
    let mut shared: BTreeMap<String, u64> = BTreeMap::new();
    for f in mine.iter().take(WHO_TO_FOLLOW_FOLLOWEES_MAX as usize) {
        for candidate in followees(f, WHO_TO_FOLLOW_PER_FOLLOWEE_MAX)? {
            if candidate != args.account && !mine.contains(&candidate) {
                *shared.entry(candidate).or_insert(0) += 1;
            }
        }
    }
    let mut ranked: Vec<Suggestion> = shared
        .into_iter()
        .map(|(account, followed_by)| Suggestion {
            account,
            followed_by,
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.followed_by
            .cmp(&a.followed_by)
            .then_with(|| a.account.cmp(&b.account))
    });
    ranked.truncate(limit);
    Ok(ranked)
}

sluice_sdk::export_module!(Social);
