"""Synthetic shopping-circle datasets with planted structure.

:func:`generate` writes a dataset directory in the format of ``shared/DATA_FORMAT.md``
(posts, products, likes, purchases, follows, clicks, and the social-shopping tables: shares,
groups, group_members, products' merchants) plus ``synth_truth.json``, the planted ground truth
that the loader ignores. Users have sparse interests over topics (beauty, coffee,
sneakers, ...), authors write mostly in one topic in mixed Chinese/English, and likes come from a
mixture of topic affinity, followed authors and global popularity, so a good collaborative or
content model beats popularity measurably while popularity stays a reasonable baseline.

Everything is drawn from one ``numpy.random.default_rng(seed)`` and vectorised: the same seed
gives byte-identical files, and a million likes take a few seconds. The social-shopping tables
(:func:`_social`) come from a second generator of the same seed, drawn after everything else, so
they leave the other tables exactly as they were before those tables existed.

The social-shopping structure: users belong to circles of friends (a planted friendship graph,
independent of follows); users share posts they like, mostly to friends; initiators launch
group-buys (拼購) on products they buy, and friends join each other's groups, the friends
keener on the product's topic more often; a product's "group appeal" (lognormal) sets how often
its groups fill up. Products belong to a few dozen merchants of skewed sizes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

MINUTE_S = 60  # every generated timestamp is a whole minute, in unix seconds
DAY_S = 86_400
WEEK_S = 7 * DAY_S
LIKE_DELAY_S = DAY_S  # median time from a post's creation to a like or click on it
LIKE_DELAY_SIGMA = 1.4  # lognormal spread of that delay: most within days, some weeks later
PURCHASE_DELAY_S = 0.25 * DAY_S  # mean time from a like to the purchase through that post
CLICK_LEAD_S = 5 * MINUTE_S  # mean time from opening a post to liking it
AUTHOR_SHARE = 0.15  # fraction of users who write posts
BACKGROUND_INTEREST = 0.05  # interest mass spread evenly over all topics
LIKE_MIX = (0.25, 0.60, 0.15)  # like sources: followed authors, own topics, global popularity
FOLLOW_TOPICAL = 0.75  # share of follows chosen within the follower's topics
OVERSAMPLE = 1.6  # like candidates drawn per wanted like (the spare ones become clicks)
CLICK_ONLY = 0.3  # clicks without a like, per like
LINKS_P = (0.15, 0.50, 0.25, 0.10)  # probability that a post links 0, 1, 2, 3 products
ATTRIBUTED_SHARE = 0.8  # share of purchases made through a liked post
# --- social shopping (drawn from the second generator: _social)
CIRCLE_SIZE = 12  # mean users per circle of friends (family, classmates, colleagues)
FRIEND_IN_CIRCLE = 0.85  # share of friendships within the user's circle
SHARE_TO_FRIEND = 0.75  # share of shares sent to a friend (the rest go to a public channel)
FRIEND_CHANNELS = ("chat", "qq")  # channels of a share to a friend, the first one most often
PUBLIC_CHANNELS = ("moments", "weibo")  # channels of a share with no receiver
SHARE_DELAY_S = 30 * MINUTE_S  # mean time from a like to sharing the post
GROUP_SIZES = (2, 3, 4, 5)  # members a group needs, the initiator included ...
GROUP_SIZE_P = (0.55, 0.25, 0.12, 0.08)  # ... and how often each size is launched
GROUP_EASE = (1.0, 0.85, 0.7, 0.6)  # a size's factor on the chance a group fills up
GROUP_TTL_S = (DAY_S, 2 * DAY_S)  # a group's time to fill up, the first one most often
GROUP_DISCOUNT = (0.6, 0.9)  # the group price is this share of the product price (uniform)
GROUP_APPEAL_SIGMA = 1.2  # lognormal spread of the per-product group appeal
FRIEND_JOIN = 0.8  # share of group members who are the initiator's friends
MERCHANTS_MAX = 40  # merchants of the default dataset; fewer for few products
PRODUCTS_PER_MERCHANT = 25  # on average, below MERCHANTS_MAX merchants
MERCHANT_ON_TOPIC = 0.8  # share of a product's merchants that sell mainly in its topic

# One topic per header line "name | 中文名 | product noun | 名詞 | typical price", then its
# vocabulary (Traditional and Simplified Chinese, English) on indented lines.
_TOPIC_TABLE = """
beauty | 美妝 | Lipstick | 口紅 | 350
    口紅 色號 唇膏 粉底 眼影 腮紅 試色 顯白 口红 色号 试色 显白 持妝 霧面 睫毛膏
    lipstick swatch shade matte blush foundation mascara eyeliner primer
skincare | 保養 | Serum | 精華液 | 680
    保濕 精華液 面膜 化妝水 乳液 防曬 敏感肌 保湿 精华 面霜 补水 美白 抗老 毛孔
    serum toner moisturizer sunscreen cleanser retinol spf skincare essence
fashion | 穿搭 | Jacket | 外套 | 1200
    穿搭 外套 襯衫 牛仔褲 連衣裙 顯瘦 搭配 衬衫 显瘦 秋冬 針織 大衣
    outfit ootd denim jacket dress coat knit vintage oversized streetwear
sneakers | 球鞋 | Sneaker | 球鞋 | 3200
    球鞋 配色 鞋款 限量 抽籤 上腳 鞋底 缓震 抽签 联名 聯名 上脚
    sneaker jordan dunk retro colorway sole boost kicks resell restock
coffee | 咖啡 | Beans | 咖啡豆 | 450
    手沖 咖啡豆 拿鐵 烘焙 風味 酸質 手冲 拿铁 磨豆机 磨豆機 濾杯 冷萃
    latte espresso pourover beans roast grinder drip barista crema v60
baby | 母嬰 | Diapers | 尿布 | 800
    奶粉 尿布 寶寶 嬰兒車 副食品 奶瓶 宝宝 尿不湿 婴儿车 辅食 安撫奶嘴
    diaper formula stroller newborn toddler bottle teether onesie nursery babywipes
fitness | 健身 | Whey | 蛋白粉 | 900
    健身 重訓 蛋白粉 瑜伽 跑步 增肌 減脂 减脂 深蹲 啞鈴 哑铃 重训
    workout gym protein yoga dumbbell squat cardio hiit whey deadlift
gadgets | 3C | Earbuds | 耳機 | 2500
    耳機 充電器 手機殼 藍牙 降噪 續航 耳机 蓝牙 充电宝 平板 鍵盤 螢幕
    earbuds charger keyboard tablet usb-c anc monitor bluetooth powerbank
pets | 寵物 | Cat Litter | 貓砂 | 400
    貓砂 貓糧 狗糧 罐頭 主子 逗貓棒 猫砂 猫粮 狗粮 铲屎官 鏟屎官 凍乾
    cat dog kitten puppy litter leash catnip grooming kibble
travel | 旅行 | Luggage | 行李箱 | 2800
    旅行 行李箱 機票 飯店 景點 自由行 酒店 机票 景点 攻略 民宿 簽證
    itinerary luggage hotel backpack passport airbnb roadtrip carry-on jetlag
snacks | 零食 | Snack Box | 零食 | 150
    零食 餅乾 巧克力 洋芋片 辣條 飲料 饼干 辣条 薯片 坚果 堅果 甜點
    snack chips cookies chocolate candy jerky boba matcha mochi
home | 家居 | Diffuser | 擴香 | 600
    收納 香氛 擴香 床包 抱枕 餐具 收纳 香薰 北欧 北歐 改造 燈具
    candle storage pillow diffuser rug decor ikea minimalist organizer
"""
_GENERIC = (
    "超好看 推薦 推荐 開箱 开箱 必買 必买 cp值 好用 回購 回购 分享 真心 喜歡 种草 種草 踩雷 平價 "
    "review love must-have haul unboxing recommend favorite wow"
).split()
_BRANDS = (
    "Lumi Aurora 木子 NORD Kiko 小熊 Haru Onda 初心 Vela Moss 森林 Brio Tora 青木 Pico Zen 暖暖 "
    "Atlas Miru 花間 Kumo Sora 一品"
).split()
_EXTRA_CHARS = "山水花月雲星光風雪竹茶香甜暖晴露霧海林石"


@dataclass(frozen=True)
class SynthConfig:
    """Size and shape of a synthetic dataset.

    ``n_products`` defaults to ``max(50, n_posts // 3)``; ``likes_per_user`` and
    ``follows_per_user`` are means (per-user activity is heavy-tailed); ``purchase_rate`` is
    purchases per like; likes, purchases and follows fall in ``weeks`` weeks from ``start``.
    ``friends_per_user`` is the mean degree of the planted friendship graph, ``share_rate``
    shares per like and ``group_rate`` group-buys launched per purchase (0 writes no groups).
    """

    n_users: int = 2000
    n_posts: int = 3000
    n_products: int | None = None
    n_topics: int = 12
    likes_per_user: float = 20.0
    purchase_rate: float = 0.15
    follows_per_user: float = 5.0
    friends_per_user: float = 6.0
    share_rate: float = 0.1
    group_rate: float = 0.5
    weeks: int = 8
    start: str = "2026-09-01T00:00:00Z"
    seed: int = 0

    @property
    def product_count(self) -> int:
        """Number of products, with the default resolved."""
        return max(50, self.n_posts // 3) if self.n_products is None else self.n_products


class _Sampler:
    """Draw one member of a group per request, with probability proportional to its weight.

    Members are sorted by group and their weights cumulated once; a request for group ``g`` is a
    uniform draw in ``g``'s slice of the cumulative sum, found with ``searchsorted``.
    """

    def __init__(self, group: np.ndarray, weight: np.ndarray, n_groups: int) -> None:
        self.order = np.argsort(group, kind="stable")
        self.cum = np.cumsum(np.asarray(weight, dtype=np.float64)[self.order])
        bounds = np.searchsorted(group[self.order], np.arange(n_groups + 1))
        self.start, self.end = bounds[:-1], bounds[1:]

    def sample(self, rng: np.random.Generator, groups: np.ndarray) -> np.ndarray:
        """Member index drawn for each entry of ``groups``; -1 where the group is empty."""
        u = rng.random(len(groups))
        if len(self.order) == 0:
            return np.full(len(groups), -1)
        start, end = self.start[groups], self.end[groups]
        lo = np.where(start > 0, self.cum[start - 1], 0.0)
        hi = np.where(end > 0, self.cum[end - 1], 0.0)
        pos = np.searchsorted(self.cum, lo + u * (hi - lo), side="right")
        pos = np.clip(pos, start, np.maximum(end - 1, start))
        picked = self.order[np.minimum(pos, len(self.order) - 1)]
        return np.where(end > start, picked, -1)


class Topic(NamedTuple):
    """An interest topic: product category name, display names, prices and vocabulary."""

    name: str
    zh: str
    noun: str
    noun_zh: str
    price: float
    vocab: tuple[str, ...]


def _parse_topics(table: str) -> tuple[Topic, ...]:
    """Topics from ``_TOPIC_TABLE``: a header line each, then indented vocabulary lines."""
    topics: list[Topic] = []
    for line in table.strip("\n").splitlines():
        if line.startswith(" "):
            topics[-1] = topics[-1]._replace(vocab=topics[-1].vocab + tuple(line.split()))
        else:
            name, zh, noun, noun_zh, price = (f.strip() for f in line.split("|"))
            topics.append(Topic(name, zh, noun, noun_zh, float(price), ()))
    return tuple(topics)


_BUILTIN_TOPICS = _parse_topics(_TOPIC_TABLE)


def topic_table(n_topics: int) -> list[Topic]:
    """The first ``n_topics`` topics, made up deterministically beyond the built-in ones.

    Examples
    --------
    >>> [t.name for t in topic_table(3)], topic_table(13)[12].name
    (['beauty', 'skincare', 'fashion'], 'topic12')
    """
    table = list(_BUILTIN_TOPICS[:n_topics])
    chars, n = _EXTRA_CHARS, len(_EXTRA_CHARS)
    for t in range(len(table), n_topics):
        words = [chars[(t * 5 + j) % n] + chars[(t * 11 + 3 * j + 1) % n] for j in range(16)]
        words += [f"topic{t}-{j}" for j in range(8)]
        table.append(Topic(f"topic{t}", f"話題{t}", "Item", "好物", 300.0, tuple(words)))
    return table


def _dedupe_truncate(
    rng: np.random.Generator, user: np.ndarray, item: np.ndarray, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop duplicate (user, item) pairs; rank each user's remaining pairs in random order.

    Returns the indices of the first occurrences (in ``user`` order, shuffled within a user)
    and each one's rank within its user; callers keep ranks below a per-user quota.
    """
    _, first = np.unique(user.astype(np.int64) * n_items + item, return_index=True)
    idx = first[np.lexsort((rng.random(len(first)), user[first]))]
    starts = np.searchsorted(user[idx], user[idx], side="left")
    rank = np.arange(len(idx)) - starts
    return idx, rank


def _categorical(rng: np.random.Generator, weight: np.ndarray, size: int) -> np.ndarray:
    """``size`` indices drawn with probability proportional to ``weight``."""
    cum = np.cumsum(np.asarray(weight, dtype=np.float64))
    return np.minimum(np.searchsorted(cum, rng.random(size) * cum[-1], side="right"), len(cum) - 1)


def _iso(seconds: np.ndarray) -> np.ndarray:
    """ISO-8601 UTC strings (``2026-10-01T08:00:00Z``) as an object array."""
    uniq, inverse = np.unique(np.asarray(seconds, dtype=np.int64), return_inverse=True)
    text = np.datetime_as_string(uniq.astype("datetime64[s]"), unit="s")
    return np.char.add(text, "Z").astype(object)[inverse.ravel()]


def _ids(prefix: str, n: int) -> np.ndarray:
    """External ids ``prefix0 .. prefix{n-1}`` as an object array."""
    return np.array([f"{prefix}{i}" for i in range(n)], dtype=object)


def _users(rng: np.random.Generator, cfg: SynthConfig, topic_weight: np.ndarray) -> dict:
    """Interests (sparse, 1-3 main topics), activity (lognormal, mean 1) and the author pool."""
    n_users, n_topics = cfg.n_users, len(topic_weight)
    n_main = np.minimum(_categorical(rng, np.array([0.35, 0.45, 0.20]), n_users) + 1, n_topics)
    keys = np.log(topic_weight) + rng.gumbel(size=(n_users, n_topics))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    raw = np.where(rank < n_main[:, None], rng.gamma(1.0, size=(n_users, n_topics)) + 0.3, 0.0)
    interest = raw / raw.sum(axis=1, keepdims=True) * (1 - BACKGROUND_INTEREST)
    interest += BACKGROUND_INTEREST / n_topics
    activity = rng.lognormal(0.0, 1.0, n_users)
    n_authors = int(np.clip(round(AUTHOR_SHARE * n_users), 1, n_users))
    authors = np.sort(rng.choice(n_users, n_authors, replace=False))
    productivity = rng.lognormal(0.0, 1.2, n_authors)
    fame = np.sqrt(productivity) * rng.lognormal(0.0, 0.5, n_authors)
    return {
        "interest": interest, "activity": activity / activity.mean(), "authors": authors,
        "author_topic": interest[authors].argmax(axis=1), "productivity": productivity,
        "fame": fame,
    }  # fmt: skip


def _products(
    rng: np.random.Generator, n: int, topics: list[Topic], topic_weight: np.ndarray
) -> dict:
    """Products with a topic (category), brand, title, price, stock flag and popularity."""
    n_topics = len(topics)
    topic = _categorical(rng, topic_weight, n)
    topic[: min(n, n_topics)] = np.arange(min(n, n_topics))  # every topic has a product if it can
    brand = (3 * topic + rng.integers(0, 5, n)) % len(_BRANDS)
    price = np.array([t.price for t in topics])[topic] * rng.lognormal(0.0, 0.5, n)
    titles = [
        f"{_BRANDS[b]} {topics[t].noun} {topics[t].noun_zh} #{i}"
        for i, (b, t) in enumerate(zip(brand, topic, strict=True))
    ]
    return {
        "frame": pd.DataFrame({
            "product_id": _ids("sku-", n), "title": titles,
            "category": [topics[t].name for t in topic], "brand": [_BRANDS[b] for b in brand],
            "price": np.round(price, 2), "in_stock": rng.random(n) >= 0.05,
        }),
        "topic": topic, "popularity": rng.lognormal(0.0, 1.0, n),
    }  # fmt: skip


def _post_text(rng: np.random.Generator, post_topic: np.ndarray, topics: list[Topic]) -> list[str]:
    """5-15 words per post, mostly from its topic's vocabulary, Chinese runs often unspaced."""
    vocab = [w for t in topics for w in t.vocab] + _GENERIC
    sizes = np.array([len(t.vocab) for t in topics])
    offset = np.concatenate([[0], np.cumsum(sizes)])
    cjk = np.array([ord(w[0]) > 0x2E80 for w in vocab])
    n_words = rng.integers(5, 16, len(post_topic))
    topic = np.repeat(post_topic, n_words)
    own = offset[topic] + (rng.random(len(topic)) * sizes[topic]).astype(np.int64)
    generic = offset[-1] + rng.integers(0, len(_GENERIC), len(topic))
    word = np.where(rng.random(len(topic)) < 0.7, own, generic)
    glue = cjk[word] & np.roll(cjk[word], 1) & (rng.random(len(topic)) < 0.7)
    ends = np.cumsum(n_words)
    texts = []
    for start, end in zip(ends - n_words, ends, strict=True):
        parts = [vocab[word[start]]]
        for i in range(start + 1, end):
            parts.append(vocab[word[i]] if glue[i] else " " + vocab[word[i]])
        texts.append("".join(parts))
    return texts


def _links(
    rng: np.random.Generator, post_topic: np.ndarray, prod: dict, n_topics: int
) -> tuple[np.ndarray, np.ndarray]:
    """Linked products as CSR (offsets per post, product indices): 0-3, mostly on topic."""
    n_posts, n_products = len(post_topic), len(prod["topic"])
    n_links = _categorical(rng, np.array(LINKS_P), n_posts)
    post = np.repeat(np.arange(n_posts), n_links)
    by_topic = _Sampler(prod["topic"], prod["popularity"], n_topics).sample(rng, post_topic[post])
    other = _categorical(rng, prod["popularity"], len(post))
    product = np.where((by_topic >= 0) & (rng.random(len(post)) < 0.9), by_topic, other)
    key = np.unique(post.astype(np.int64) * n_products + product)
    offsets = np.searchsorted(key // n_products, np.arange(n_posts + 1))
    return offsets, key % n_products


def _posts(
    rng: np.random.Generator, cfg: SynthConfig, users: dict, topics: list[Topic], t0: int
) -> dict:
    """Posts: author, topic (mostly the author's), time, latent popularity, text, links."""
    n, n_topics, span = cfg.n_posts, len(topics), cfg.weeks * WEEK_S
    created = t0 + np.sort(rng.integers(0, span // MINUTE_S, n)) * MINUTE_S
    pool = users["authors"]
    slot = _categorical(rng, users["productivity"], n)
    side = users["interest_sampler"].sample(rng, pool[slot]) % n_topics
    topic = np.where(rng.random(n) < 0.85, users["author_topic"][slot], side)
    popularity = rng.lognormal(0.0, 1.0, n) * np.sqrt(users["fame"][slot])
    templates = ("{zh}開箱", "{en} review", "{zh}推薦", "本週{zh}", "my {en} haul", "{zh}心得")
    has_title = rng.random(n) < 0.6
    form = rng.integers(0, len(templates), n)
    sub = rng.random(n)
    titles, tags = [], []
    for t, titled, f, s in zip(topic, has_title, form, sub, strict=True):
        top = topics[t]
        titles.append(templates[f].format(zh=top.noun_zh, en=top.noun.lower()) if titled else "")
        tags.append(f"{top.name}|{top.vocab[int(s * len(top.vocab))]}" if s < 0.4 else top.name)
    return {
        "author": pool[slot], "topic": topic, "created": created, "popularity": popularity,
        "text": _post_text(rng, topic, topics), "title": titles, "tags": tags,
    }  # fmt: skip


def _follows(
    rng: np.random.Generator, cfg: SynthConfig, users: dict, n_topics: int, t0: int
) -> tuple[np.ndarray, ...]:
    """Follows (follower, followee, ts): mostly authors in the follower's topics, some famous."""
    n_users, pool, fame = cfg.n_users, users["authors"], users["fame"]
    want = rng.poisson(cfg.follows_per_user, n_users)
    follower = np.repeat(np.arange(n_users), np.ceil(want * 1.3).astype(np.int64))
    topic = users["interest_sampler"].sample(rng, follower) % n_topics
    topical = _Sampler(users["author_topic"], fame, n_topics).sample(rng, topic)
    famous_pick = _categorical(rng, fame**1.5, len(follower))
    on_topic = (topical >= 0) & (rng.random(len(follower)) < FOLLOW_TOPICAL)
    followee = pool[np.where(on_topic, topical, famous_pick)]
    ok = followee != follower
    follower, followee = follower[ok], followee[ok]
    idx, rank = _dedupe_truncate(rng, follower, followee, n_users)
    idx = idx[rank < want[follower[idx]]]
    ts = t0 + rng.integers(0, cfg.weeks * WEEK_S // MINUTE_S, len(idx)) * MINUTE_S
    return follower[idx], followee[idx], ts


def _candidates(
    rng: np.random.Generator, cfg: SynthConfig, users: dict, posts: dict, follows: tuple
) -> tuple:
    """Engagement candidates (user, post): a mixture of followed authors, topics, popularity."""
    n_users, n_topics = cfg.n_users, users["interest"].shape[1]
    want = rng.poisson(cfg.likes_per_user * users["activity"])
    user = np.repeat(np.arange(n_users), np.ceil(want * OVERSAMPLE).astype(np.int64))
    source = _categorical(rng, np.array(LIKE_MIX), len(user))
    follower, followee, _ = follows
    row = _Sampler(follower, np.ones(len(follower)), n_users).sample(rng, user)
    author = np.append(followee, 0)[row]  # row -1 (no follows) picks the placeholder 0
    by_author = _Sampler(posts["author"], posts["popularity"], n_users).sample(rng, author)
    by_author[row < 0] = -1
    topic = users["interest_sampler"].sample(rng, user) % n_topics
    by_topic = _Sampler(posts["topic"], posts["popularity"], n_topics).sample(rng, topic)
    popular = _categorical(rng, posts["popularity"], len(user))
    post = np.select([source == 0, source == 1], [by_author, by_topic], popular)
    post = np.where(post < 0, by_topic, post)
    post = np.where(post < 0, popular, post)
    return user, post, want


def _likes_clicks(
    rng: np.random.Generator, cfg: SynthConfig, users: dict, posts: dict, follows: tuple, t0: int
) -> tuple[tuple, tuple]:
    """Likes (user, post, ts) and clicks (user, post, ts); a like follows its post's creation."""
    user, post, want = _candidates(rng, cfg, users, posts, follows)
    delay = np.ceil(LIKE_DELAY_S / MINUTE_S * rng.lognormal(0.0, LIKE_DELAY_SIGMA, len(post)))
    delay *= MINUTE_S
    ts = posts["created"][post] + delay.astype(np.int64)
    ok = (ts < t0 + cfg.weeks * WEEK_S) & (posts["author"][post] != user)
    user, post, ts = user[ok], post[ok], ts[ok]
    idx, rank = _dedupe_truncate(rng, user, post, len(posts["topic"]))
    liked = rank < want[user[idx]]
    extra = rank < want[user[idx]] + np.ceil(CLICK_ONLY * want[user[idx]])
    like, only = idx[liked], idx[extra & ~liked]
    clicked = like[rng.random(len(like)) < 0.9]
    lead = np.ceil(rng.exponential(CLICK_LEAD_S / MINUTE_S, len(clicked))) * MINUTE_S
    lead_ts = np.maximum(ts[clicked] - lead.astype(np.int64), posts["created"][post[clicked]])
    click = np.concatenate([clicked, only])
    click_ts = np.concatenate([lead_ts, ts[only]])
    return (user[like], post[like], ts[like]), (user[click], post[click], click_ts)


def _purchases(
    rng: np.random.Generator,
    cfg: SynthConfig,
    users: dict,
    prod: dict,
    links: tuple,
    likes: tuple,
    t0: int,
) -> tuple[np.ndarray, ...]:
    """Purchases through liked posts' links (with post_id) plus direct ones (without)."""
    (user, post, ts), (offsets, linked) = likes, links
    n_links = np.diff(offsets)[post]
    share = ATTRIBUTED_SHARE * cfg.purchase_rate * len(post) / max(1, int((n_links > 0).sum()))
    buy = (n_links > 0) & (rng.random(len(post)) < min(1.0, share))
    pick = offsets[post[buy]] + (rng.random(int(buy.sum())) * n_links[buy]).astype(np.int64)
    delay = np.ceil(rng.exponential(PURCHASE_DELAY_S / MINUTE_S, len(pick))) * MINUTE_S
    p_ts = ts[buy] + delay.astype(np.int64)
    n_direct = round((1 - ATTRIBUTED_SHARE) * cfg.purchase_rate * len(post))
    n_topics = users["interest"].shape[1]
    d_user = _categorical(rng, users["activity"], n_direct)
    topic = users["interest_sampler"].sample(rng, d_user) % n_topics
    d_prod = _Sampler(prod["topic"], prod["popularity"], n_topics).sample(rng, topic)
    d_prod = np.where(d_prod < 0, rng.integers(0, len(prod["topic"]), n_direct), d_prod)
    d_ts = t0 + rng.integers(0, cfg.weeks * WEEK_S // MINUTE_S, n_direct) * MINUTE_S
    all_user = np.concatenate([user[buy], d_user])
    all_post = np.concatenate([post[buy], np.full(n_direct, -1)])
    all_prod = np.concatenate([linked[pick], d_prod])
    all_ts = np.concatenate([p_ts, d_ts])
    ok = all_ts < t0 + cfg.weeks * WEEK_S
    quantity = 1 + (rng.random(len(all_ts)) < 0.1).astype(np.int64)
    return all_user[ok], all_prod[ok], all_ts[ok], all_post[ok], quantity[ok]


class _Friends:
    """Draw one friend of each requested user from friendship pairs (either end); -1 for a
    user with no friend."""

    def __init__(self, a: np.ndarray, b: np.ndarray, n_users: int) -> None:
        self.edges = _Sampler(np.concatenate([a, b]), np.ones(2 * len(a)), n_users)
        self.other = np.concatenate([b, a])

    def sample(self, rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
        edge = self.edges.sample(rng, users)
        if len(self.other) == 0:
            return edge
        return np.where(edge >= 0, self.other[np.maximum(edge, 0)], -1)


def _merchants(rng: np.random.Generator, prod: dict, topic_weight: np.ndarray) -> dict:
    """Merchants (shops) with a main topic and a skewed size; each product's merchant, mostly
    one selling in the product's topic."""
    n_products, n_topics = len(prod["topic"]), len(topic_weight)
    n = int(np.clip(n_products // PRODUCTS_PER_MERCHANT, 1, MERCHANTS_MAX))
    topic = _categorical(rng, topic_weight, n)
    size = rng.lognormal(0.0, 1.2, n)
    on_topic = _Sampler(topic, size, n_topics).sample(rng, prod["topic"])
    anyone = _categorical(rng, size, n_products)
    merchant = np.where((on_topic >= 0) & (rng.random(n_products) < MERCHANT_ON_TOPIC), on_topic,
                        anyone)  # fmt: skip
    return {"merchant": merchant, "topic": topic, "ids": _ids("shop-", n)}


def _friendships(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """The planted friendship graph as pairs (a < b): mostly within circles of friends."""
    n = cfg.n_users
    circle = rng.integers(0, max(1, n // CIRCLE_SIZE), n)
    want = rng.poisson(cfg.friends_per_user / 2, n)  # each pair is a friend of both
    a = np.repeat(np.arange(n), want)
    inside = _Sampler(circle, np.ones(n), int(circle.max()) + 1).sample(rng, circle[a])
    b = np.where(rng.random(len(a)) < FRIEND_IN_CIRCLE, inside, rng.integers(0, n, len(a)))
    ok = (b >= 0) & (b != a)
    key = np.unique(np.minimum(a, b)[ok].astype(np.int64) * n + np.maximum(a, b)[ok])
    return key // n, key % n


def _shares(
    rng: np.random.Generator, cfg: SynthConfig, friends: _Friends, likes: tuple, end: int
) -> tuple[np.ndarray, ...]:
    """Shares (user, post, receiver or -1, ts, channel index) of liked posts, mostly to a
    friend; channel indices point into FRIEND_CHANNELS + PUBLIC_CHANNELS."""
    user, post, ts = likes
    pick = np.flatnonzero(rng.random(len(user)) < min(1.0, cfg.share_rate))
    user, post = user[pick], post[pick]
    delay = np.ceil(rng.exponential(SHARE_DELAY_S / MINUTE_S, len(pick))) * MINUTE_S
    when = ts[pick] + delay.astype(np.int64)
    receiver = friends.sample(rng, user)
    receiver = np.where(rng.random(len(pick)) < SHARE_TO_FRIEND, receiver, -1)
    n_friendly = len(FRIEND_CHANNELS)
    channel = np.where(
        receiver >= 0,
        (rng.random(len(pick)) < 0.3).astype(np.int64),  # chat mostly, qq sometimes
        n_friendly + rng.integers(0, len(PUBLIC_CHANNELS), len(pick)),
    )
    ok = when < end
    return user[ok], post[ok], receiver[ok], when[ok], channel[ok]


def _groups(
    rng: np.random.Generator,
    cfg: SynthConfig,
    users: dict,
    prod: dict,
    friends: _Friends,
    purchases: tuple,
    t0: int,
) -> dict:
    """Group-buys launched on purchases (initiator, product), their members and status.

    A group fills up with probability ``appeal / (appeal + 1)`` of its product times its
    size's ease; members are mostly the initiator's friends, each the more interested in the
    product's topic of two friends drawn (strangers by activity). A full group succeeded, one
    still running at the end of the window is open, the rest failed.
    """
    end = t0 + cfg.weeks * WEEK_S
    p_user, p_prod, p_ts = purchases[0], purchases[1], purchases[2]
    n = int(round(min(cfg.group_rate, 1.0) * len(p_user)))
    rows = np.sort(rng.choice(len(p_user), n, replace=False)) if n else np.zeros(0, np.int64)
    initiator, product = p_user[rows], p_prod[rows]
    lead = rng.integers(0, 6 * 60, n) * MINUTE_S  # launched up to 6 h before buying
    created = np.maximum(p_ts[rows] - lead, t0)
    size_ix = _categorical(rng, np.array(GROUP_SIZE_P), n)
    size = np.array(GROUP_SIZES)[size_ix]
    expires = created + np.array(GROUP_TTL_S)[(rng.random(n) < 0.2).astype(np.int64)]
    appeal = prod["appeal"][product]
    fills = rng.random(n) < appeal / (appeal + 1.0) * np.array(GROUP_EASE)[size_ix]
    want = np.where(fills, size - 1, np.floor(rng.random(n) * (size - 1)).astype(np.int64))
    # candidate members: twice what is wanted, friends first, strangers (by activity) else
    group = np.repeat(np.arange(n), 2 * want + 1)
    # of two friends drawn, the one more interested in the product's topic: friends join
    # groups for products they want too, not for the initiator alone
    topic = prod["topic"][product[group]]
    pair = [friends.sample(rng, initiator[group]) for _ in range(2)]
    keen = [np.where(f >= 0, users["interest"][np.maximum(f, 0), topic], -1.0) for f in pair]
    friend = np.where(keen[1] > keen[0], pair[1], pair[0])
    stranger = _categorical(rng, users["activity"], len(group))
    member = np.where((friend >= 0) & (rng.random(len(group)) < FRIEND_JOIN), friend, stranger)
    ok = member != initiator[group]
    group, member = group[ok], member[ok]
    idx, rank = _dedupe_truncate(rng, group, member, cfg.n_users)
    idx = idx[rank < want[group[idx]]]
    group, member = group[idx], member[idx]
    joined = np.bincount(group, minlength=n)
    span = np.minimum(expires, end)[group] - created[group]
    m_ts = created[group] + (rng.random(len(group)) * span // MINUTE_S).astype(np.int64) * MINUTE_S
    full = joined == size - 1
    status = np.where(full, 0, np.where(expires > end, 2, 1))  # succeeded, failed, open
    keep = m_ts < end
    price = prod["frame"]["price"].to_numpy()[product] * rng.uniform(*GROUP_DISCOUNT, n)
    return {
        "initiator": initiator, "product": product, "created": created, "expires": expires,
        "size": size, "status": status, "price": np.round(price, 2),
        "members": (group[keep], member[keep], m_ts[keep]),
    }  # fmt: skip


def _social(cfg: SynthConfig, users: dict, parts: dict, topic_weight: np.ndarray, t0: int) -> dict:
    """The social-shopping parts (merchants, friendships, shares, groups), from a generator
    of its own (seeded by ``(seed, 1)``) so that the other tables do not change."""
    rng = np.random.default_rng([cfg.seed, 1])
    prod = parts["products"]
    merchants = _merchants(rng, prod, topic_weight)
    prod["frame"]["merchant_id"] = merchants["ids"][merchants["merchant"]]
    prod["appeal"] = rng.lognormal(0.0, GROUP_APPEAL_SIGMA, len(prod["topic"]))
    a, b = _friendships(rng, cfg)
    friends = _Friends(a, b, cfg.n_users)
    end = t0 + cfg.weeks * WEEK_S
    return {
        "merchants": merchants,
        "friendships": (a, b),
        "shares": _shares(rng, cfg, friends, parts["likes"], end),
        "groups": _groups(rng, cfg, users, prod, friends, parts["purchases"], t0),
    }


def _frames(cfg: SynthConfig, topics: list[Topic], parts: dict) -> dict[str, pd.DataFrame]:
    """The dataset tables, rows in time order, ids as strings."""
    uid, pid = _ids("u", cfg.n_users), _ids("p", cfg.n_posts)
    sku = parts["products"]["frame"]["product_id"].to_numpy()
    posts, (offsets, linked) = parts["posts"], parts["links"]
    product_ids = [
        "|".join(sku[linked[a:b]]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)
    ]
    pid_or_empty = np.append(pid, "")  # index -1 is "no post"

    def table(columns: dict, ts: np.ndarray, *tie: np.ndarray) -> pd.DataFrame:
        order = np.lexsort((*reversed(tie), ts))
        return pd.DataFrame(
            {k: v[order] if isinstance(v, np.ndarray) else v for k, v in columns.items()}
        )

    likes, clicks, follows, buys = (parts[k] for k in ("likes", "clicks", "follows", "purchases"))
    return {
        "posts": pd.DataFrame({
            "post_id": pid, "author_id": uid[posts["author"]], "created_at": _iso(posts["created"]),
            "text": posts["text"], "product_ids": product_ids, "title": posts["title"],
            "tags": posts["tags"],
        }),
        "products": parts["products"]["frame"],
        "likes": table({"user_id": uid[likes[0]], "post_id": pid[likes[1]],
                        "ts": _iso(likes[2])}, likes[2], likes[0], likes[1]),
        "purchases": table({"user_id": uid[buys[0]], "product_id": sku[buys[1]],
                            "ts": _iso(buys[2]), "post_id": pid_or_empty[buys[3]],
                            "quantity": buys[4]}, buys[2], buys[0], buys[1]),
        "follows": table({"follower_id": uid[follows[0]], "followee_id": uid[follows[1]],
                          "ts": _iso(follows[2])}, follows[2], follows[0], follows[1]),
        "clicks": table({"user_id": uid[clicks[0]], "post_id": pid[clicks[1]],
                         "ts": _iso(clicks[2])}, clicks[2], clicks[0], clicks[1]),
        **_social_frames(uid, pid, sku, parts["social"], table),
    }  # fmt: skip


def _social_frames(
    uid: np.ndarray, pid: np.ndarray, sku: np.ndarray, social: dict, table: Any
) -> dict[str, pd.DataFrame]:
    """shares, groups and group_members; group ids ``g<i>`` in launch order."""
    sh, g = social["shares"], social["groups"]
    channels = np.array(FRIEND_CHANNELS + PUBLIC_CHANNELS, dtype=object)
    uid_or_empty = np.append(uid, "")  # index -1 is "no receiver"
    order = np.lexsort((g["initiator"], g["created"]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    gid = _ids("g", len(order))
    statuses = np.array(["succeeded", "failed", "open"], dtype=object)
    grp, member, m_ts = g["members"]
    return {
        "shares": table({"user_id": uid[sh[0]], "post_id": pid[sh[1]],
                         "receiver_id": uid_or_empty[sh[2]], "ts": _iso(sh[3]),
                         "channel": channels[sh[4]]}, sh[3], sh[0], sh[1]),
        "groups": pd.DataFrame({
            "group_id": gid, "product_id": sku[g["product"][order]],
            "initiator_id": uid[g["initiator"][order]], "created_at": _iso(g["created"][order]),
            "status": statuses[g["status"][order]], "size": g["size"][order],
            "expires_at": _iso(g["expires"][order]), "price": g["price"][order],
        }),
        "group_members": table({"group_id": gid[rank[grp]], "user_id": uid[member],
                                "ts": _iso(m_ts)}, m_ts, rank[grp], member),
    }  # fmt: skip


def _write(out: Path, name: str, frame: pd.DataFrame, fmt: str) -> None:
    """Write one table as ``name.fmt``; remove a stale copy in the other format."""
    if fmt == "csv":
        if "in_stock" in frame:
            frame = frame.assign(in_stock=np.where(frame["in_stock"], "true", "false"))
        frame.to_csv(out / f"{name}.csv", index=False, float_format="%.2f", lineterminator="\n")
    else:
        frame.to_parquet(out / f"{name}.parquet", index=False)
    stale = out / f"{name}.{'parquet' if fmt == 'csv' else 'csv'}"
    if stale.exists():
        logger.info("removing %s so that %s holds one dataset", stale, out)
        stale.unlink()


def _truth(
    cfg: SynthConfig, topics: list[Topic], users: dict, posts: dict, social: dict, products: dict
) -> dict:
    """The planted structure, for tests and notebooks (the loader ignores it)."""
    top2 = np.argsort(-users["interest"], axis=1, kind="stable")[:, :2]
    return {
        "topics": [t.name for t in topics],
        "user_topics": {f"u{i}": row for i, row in enumerate(top2.tolist())},
        "post_topic": {f"p{i}": t for i, t in enumerate(posts["topic"].tolist())},
        "author_topic": {
            f"u{a}": t
            for a, t in zip(users["authors"].tolist(), users["author_topic"].tolist(), strict=True)
        },
        "config": {**dataclasses.asdict(cfg), "n_products": cfg.product_count},
        **_social_truth(social, products),
    }


def _social_truth(social: dict, products: dict) -> dict:
    """The planted social-shopping structure: friendships, group appeal, merchants' topics."""
    a, b = social["friendships"]
    sku = products["frame"]["product_id"].tolist()
    m = social["merchants"]
    return {
        "friendships": [[f"u{x}", f"u{y}"] for x, y in zip(a.tolist(), b.tolist(), strict=True)],
        "group_appeal": dict(zip(sku, np.round(products["appeal"], 4).tolist(), strict=True)),
        "merchant_topic": dict(zip(m["ids"].tolist(), m["topic"].tolist(), strict=True)),
        "friend_join_share": FRIEND_JOIN,
    }


def _check(cfg: SynthConfig, fmt: str) -> int:
    """Validate the arguments of :func:`generate`; return the start time in unix seconds."""
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"fmt must be 'csv' or 'parquet', got {fmt!r}")
    for name in ("n_users", "n_posts", "product_count", "n_topics", "weeks"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"SynthConfig.{name} must be >= 1, got {getattr(cfg, name)}")
    for name in (
        "likes_per_user", "purchase_rate", "follows_per_user", "friends_per_user", "share_rate",
        "group_rate",
    ):  # fmt: skip
        if not getattr(cfg, name) >= 0:
            raise ValueError(f"SynthConfig.{name} must be >= 0, got {getattr(cfg, name)}")
    try:
        start = datetime.fromisoformat(cfg.start)
    except ValueError as e:
        raise ValueError(f"SynthConfig.start is not an ISO-8601 time: {cfg.start!r}") from e
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return int(start.timestamp()) // MINUTE_S * MINUTE_S


def generate(
    out_dir: str | Path, config: SynthConfig | None = None, *, fmt: str = "csv"
) -> dict[str, int]:
    """Write a synthetic dataset with planted topics, authors and popularity into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Directory to write (created if missing). Dataset files are overwritten, and a dataset
        file in the other format (``posts.parquet`` when writing CSV) is removed.
    config : SynthConfig, optional
        Sizes, rates, time window and seed; ``SynthConfig()`` when omitted.
    fmt : {"csv", "parquet"}
        File format of the tables. ``synth_truth.json`` is always JSON.

    Returns
    -------
    dict of str to int
        Rows written per file name, e.g. ``{"posts.csv": 3000, "likes.csv": ...}``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as out:
    ...     counts = generate(out, SynthConfig(n_users=50, n_posts=40, seed=1))
    >>> counts["posts.csv"], len(counts), counts["groups.csv"] > 0
    (40, 9, True)
    """
    cfg = config if config is not None else SynthConfig()
    t0 = _check(cfg, fmt)
    rng = np.random.default_rng(cfg.seed)
    topics = topic_table(cfg.n_topics)
    topic_weight = rng.gamma(2.0, size=cfg.n_topics)
    topic_weight /= topic_weight.sum()
    users = _users(rng, cfg, topic_weight)
    flat_user = np.repeat(np.arange(cfg.n_users), cfg.n_topics)
    users["interest_sampler"] = _Sampler(flat_user, users["interest"].ravel(), cfg.n_users)
    parts: dict = {"products": _products(rng, cfg.product_count, topics, topic_weight)}
    parts["posts"] = _posts(rng, cfg, users, topics, t0)
    parts["links"] = _links(rng, parts["posts"]["topic"], parts["products"], cfg.n_topics)
    parts["follows"] = _follows(rng, cfg, users, cfg.n_topics, t0)
    parts["likes"], parts["clicks"] = _likes_clicks(
        rng, cfg, users, parts["posts"], parts["follows"], t0
    )
    parts["purchases"] = _purchases(
        rng, cfg, users, parts["products"], parts["links"], parts["likes"], t0
    )
    parts["social"] = _social(cfg, users, parts, topic_weight, t0)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, frame in _frames(cfg, topics, parts).items():
        _write(out, name, frame, fmt)
        counts[f"{name}.{fmt}"] = len(frame)
    truth = _truth(cfg, topics, users, parts["posts"], parts["social"], parts["products"])
    (out / "synth_truth.json").write_text(json.dumps(truth, ensure_ascii=False), encoding="utf-8")
    logger.info("wrote synthetic dataset to %s: %s", out, counts)
    return counts
