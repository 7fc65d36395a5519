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
//!   ([`sluice_sdk::partition_of_key`]) into one `deliver` hop per partition, and the next chunk
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

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use sluice_sdk::{
    partition_of_key, AckReturn, Ctx, Definition, Error, HopTarget, KeyRange, Module, Partitioner,
    Path, QueryCtx, Result, Schema,
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

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Post {
    pub author: String,
    pub id: String,
    pub text: String,
    pub time: i64,
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

struct Social;

impl Module for Social {
    fn define(m: &mut Definition) {
        m.depot("follows", Partitioner::hash("follower"));
        m.depot("posts", Partitioner::hash("author"));
        m.depot("profiles", Partitioner::hash("account"));
        let post = Schema::record(&[
            ("author", Schema::string()),
            ("id", Schema::string()),
            ("text", Schema::string()),
            ("time", Schema::int()),
        ]);
        // follower -> how many posts the followee had when the follow arrived.
        m.pstate(
            "followers",
            Schema::map(
                Schema::string(),
                Schema::map(Schema::string(), Schema::int()).subindexed(),
            ),
        );
        m.pstate(
            "following",
            Schema::map(Schema::string(), Schema::set(Schema::string()).subindexed()),
        );
        // [time, id] -> post
        m.pstate(
            "posts-by-author",
            Schema::map(
                Schema::string(),
                Schema::map(Schema::list(Schema::any()), post.clone()).subindexed(),
            ),
        );
        // [time, author, id] -> post
        m.pstate(
            "home-timelines",
            Schema::map(
                Schema::string(),
                Schema::map(Schema::list(Schema::any()), post).subindexed(),
            ),
        );
        m.pstate(
            "profiles",
            Schema::map(
                Schema::string(),
                Schema::record(&[("name", Schema::string()), ("bio", Schema::string())]),
            ),
        );
        m.stream_topology("follows")
            .reads("follows")
            .handler(on_follow)
            .hop_handler("add-follower", add_follower)
            .hop_handler("remove-follower", remove_follower);
        m.stream_topology("posts")
            .reads("posts")
            .handler(on_post)
            .hop_handler("fan-out", fan_out)
            .hop_handler("deliver", deliver);
        m.stream_topology("profiles")
            .reads("profiles")
            .handler(on_profile);
        m.query("timeline", timeline);
        m.query("profile", profile);
        m.query("who-to-follow", who_to_follow);
    }
}

fn on_follow(ctx: &Ctx, f: Follow) -> Result<()> {
    if f.follower == f.followee {
        return Ok(());
    }
    let following = ctx.pstate("following");
    let mine = Path::key(&f.follower);
    let edge = Edge {
        follower: f.follower.clone(),
        followee: f.followee.clone(),
    };
    if f.op == FollowOp::Follow {
        following.insert(&mine, &f.followee)?;
        ctx.hop(HopTarget::Key(&f.followee), "add-follower", &edge)
    } else {
        let only = KeyRange::all().from(&f.followee).through(&f.followee);
        following.remove(&mine.sorted_range(only))?;
        ctx.hop(HopTarget::Key(&f.followee), "remove-follower", &edge)
    }
}

fn add_follower(ctx: &Ctx, e: Edge) -> Result<()> {
    let followers = ctx.pstate("followers");
    let entry = Path::key(&e.followee).then_key(&e.follower);
    if followers.get::<IgnoredAny>(&entry)?.is_some() {
        return Ok(()); // already following: keep the original position
    }
    let posts = ctx
        .pstate("posts-by-author")
        .count(&Path::key(&e.followee))?;
    followers.set(&entry, &posts)
}

fn remove_follower(ctx: &Ctx, e: Edge) -> Result<()> {
    ctx.pstate("followers")
        .remove(&Path::key(&e.followee).then_key(&e.follower))
}

fn on_post(ctx: &Ctx, post: Post) -> Result<AckReturn<u64>> {
    if post.id.is_empty() {
        return Err(Error::new("invalid-post", "a post needs a non-empty `id`"));
    }
    let posts = ctx.pstate("posts-by-author");
    let entry = Path::key(&post.author).then_key(&(post.time, &post.id));
    if posts.get::<IgnoredAny>(&entry)?.is_some() {
        return Ok(AckReturn(0));
    }
    let seq = posts.count(&Path::key(&post.author))?;
    posts.set(&entry, &post)?;
    // Everyone following now has a position <= seq: this many timelines receive the post.
    let recipients = ctx.pstate("followers").count(&Path::key(&post.author))?;
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
    let chunk: Vec<(String, u64)> = ctx
        .pstate("followers")
        .select(&Path::key(&post.author).sorted_range(range).all())?;
    let partitions = ctx.record().partitions;
    let mut groups: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (follower, since) in &chunk {
        if *since <= seq {
            let p = partition_of_key(follower, partitions)?;
            groups.entry(p).or_default().push(follower.clone());
        }
    }
    for (p, to) in groups {
        let d = Delivery {
            post: post.clone(),
            to,
        };
        ctx.hop(HopTarget::<()>::Partition(p), "deliver", &d)?;
    }
    if chunk.len() as u64 == FANOUT_CHUNK_FOLLOWERS {
        let after = chunk.last().map(|(f, _)| f.clone()).unwrap_or_default();
        let author = post.author.clone();
        ctx.hop(
            HopTarget::Key(&author),
            "fan-out",
            &FanOut { post, seq, after },
        )?;
    }
    Ok(())
}

fn deliver(ctx: &Ctx, d: Delivery) -> Result<()> {
    let timelines = ctx.pstate("home-timelines");
    let key = (d.post.time, &d.post.author, &d.post.id);
    for account in &d.to {
        let timeline = Path::key(account);
        timelines.set(&timeline.clone().then_key(&key), &d.post)?;
        let n = timelines.count(&timeline)?;
        if n > TIMELINE_ENTRIES_MAX {
            let oldest = KeyRange::all().limit(n - TIMELINE_ENTRIES_MAX);
            timelines.remove(&timeline.sorted_range(oldest))?;
        }
    }
    Ok(())
}

fn on_profile(ctx: &Ctx, p: ProfileUpdate) -> Result<()> {
    let profiles = ctx.pstate("profiles");
    let entry = Path::key(&p.account);
    if let Some(name) = &p.name {
        profiles.set(&entry.clone().then_key("name"), name)?;
    }
    if let Some(bio) = &p.bio {
        profiles.set(&entry.then_key("bio"), bio)?;
    }
    Ok(())
}

/// Where a timeline page ends: before this time, or before this entry (a page's `next`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Before {
    Time(i64),
    Entry((i64, String, String)),
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
    next: Option<(i64, String, String)>,
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
    let entries: Vec<(IgnoredAny, Post)> = q
        .pstate("home-timelines")
        .select(&Path::key(&args.account).sorted_range(range).all())?;
    let posts: Vec<Post> = entries.into_iter().map(|(_, p)| p).collect();
    let next = if posts.len() as u64 == limit {
        posts
            .last()
            .map(|p| (p.time, p.author.clone(), p.id.clone()))
    } else {
        None
    };
    Ok(TimelinePage { posts, next })
}

#[derive(Deserialize)]
struct AccountArgs {
    account: String,
}

#[derive(Deserialize, Default)]
struct ProfileFields {
    name: Option<String>,
    bio: Option<String>,
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
    let key = Path::key(&args.account);
    let fields: ProfileFields = q.pstate("profiles").get(&key)?.unwrap_or_default();
    Ok(ProfileView {
        followers: q.pstate("followers").count(&key)?,
        following: q.pstate("following").count(&key)?,
        posts: q.pstate("posts-by-author").count(&key)?,
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
    let following = q.pstate("following");
    let followees = |account: &str, max: u64| -> Result<Vec<String>> {
        let range = KeyRange::all().limit(max);
        following.select(&Path::key(account).sorted_range(range).all())
    };
    let mine: BTreeSet<String> = followees(&args.account, WHO_TO_FOLLOW_EXCLUDED_MAX)?
        .into_iter()
        .collect();
    let mut shared: BTreeMap<String, u64> = BTreeMap::new();
    // Each read goes to the partition owning that followee's entry.
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
