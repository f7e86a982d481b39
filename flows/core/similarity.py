"""Whether two comparison keys are near-duplicates: edit similarity with a length-aware budget, and meaning guards.

Keys are normalised texts (letters and digits; `flows.core.text.near_key`). Keys x and y of lengths n ≤ m are
near-duplicates when

- their guarded characters are the same, in the same order: negations (不 没 未 无 非 别 勿), digits and Chinese
  numerals, Latin letters, and ideographs that only traditional Chinese writes (個, 們, 軟 ...). Inserting or removing
  a negation, changing a number, swapping a Latin name (NBA / CBA, iPhone 6 / 7) or writing a side in the other
  script is never a near-duplicate edit, at any length;
- they are not one character or word swapped for its antonym (多 / 少, 支持 / 拒绝: `ANTONYMS`, `ANTONYM_WORDS`),
  and not the same text in the two scripts where a character is shared by both (沿著 / 沿着: the keys differ but
  simplify, by zhconv, to one). These two checks read words, so they run in Python, on the pairs that pass the
  others only. Chinese names swapped for Chinese names (北京 / 上海) cannot be told from a typo without a lexicon
  and are not guarded;
- their Levenshtein distance d (a substitution, insertion or deletion of one character counts 1) is at most
  (1 - threshold) × m: with the default threshold 0.875, no edit under 8 characters, one from 8, two from 16, and
  one in eight at any length up to 10,000 characters. The similarity reported is 1 - d / m.

Two keys equal but for clause-final particles (吗 呢 啊) already have equal near keys, so 你好吗 / 你好 are
near-duplicates although 2 characters allow no edit.

The distance is bounded, never computed in full: the lengths first (d ≥ m - n), then the bigram bound
(d ≥ |bigram multiset difference| / 4: an edit changes at most two bigrams of each text) for keys that allow more
than two edits, then the diagonal-transition algorithm (Ukkonen 1985), which stops as soon as d exceeds the budget
and costs about (m + d²) steps on near-equal keys.
"""

from collections.abc import Sequence
from functools import cache

import numba
import numpy as np
import zhconv.zhconv

NEGATIONS = "不没未无非别勿"
# Character antonyms (pairs of characters, space-separated): keys whose only difference is one swapped for the other
# are not near-duplicates.
ANTONYMS = ("多少 大小 高低 长短 上下 前后 左右 内外 男女 买卖 增减 加减 新旧 早晚 快慢 好坏 真假 冷热 远近 轻重 "
            "胖瘦 强弱 难易 开关 进出 来去 升降 涨跌 输赢 胜负 得失 老少 深浅 宽窄 粗细 厚薄 贵贱 美丑 黑白 东西 "
            "南北 正反 先后 有无 是否 对错 生死 爱恨 冬夏 春秋 阴晴 干湿 甜苦 借还 收发 推拉 敌友 攻守")
# Word antonyms (word/word, space-separated), the same.
ANTONYM_WORDS = ("支持/拒绝 支持/反对 同意/反对 接受/拒绝 增加/减少 上升/下降 提高/降低 扩大/缩小 成功/失败 胜利/失败 "
                 "喜欢/讨厌 赞成/反对 允许/禁止 开始/结束 最早/最晚 最高/最低 最大/最小 最多/最少 以前/以后 之前/之后 "
                 "肯定/否定 积极/消极 正确/错误 安全/危险 简单/复杂 容易/困难 合法/非法 出口/进口 输入/输出 "
                 "上涨/下跌 买入/卖出 打开/关闭 获得/失去 存在/消失 记得/忘记")
NUMERALS = "零〇一二三四五六七八九十百千万亿两"
_UNREACHED = -(2**30)
_BIGRAM_BOUND_ABOVE = 2  # budgets (edits) above which the bigram bound is checked before the distance


@cache
def _antonyms() -> frozenset[tuple[str, str]]:
    pairs = [(x, y) for x, y in ANTONYMS.split()] + [tuple(w.split("/")) for w in ANTONYM_WORDS.split()]
    return frozenset((a, b) for x, y in pairs for a, b in ((x, y), (y, x)))


@cache
def _shared_script_forms() -> frozenset[str]:
    """Characters zhconv simplifies in some words only (著 in 沿著, not in 著名): a pair whose difference holds one
    is compared simplified whole. (The characters only traditional Chinese writes are guarded instead.)"""
    table = zhconv.zhconv.getdict("zh-cn")
    forms = set()
    for k, v in table.items():
        if len(k) == len(v):
            forms.update(a for a, b in zip(k, v, strict=True) if a != b)
    return frozenset(forms - {k for k, v in table.items() if len(k) == 1 and k != v})


@cache
def _lexical_flags() -> tuple[np.ndarray, int]:
    """A flag per code point for the shared script forms, and the longest antonym: what `_may_be_lexical` needs."""
    flags = np.zeros(0x110000, dtype=np.uint8)
    for ch in _shared_script_forms():
        flags[ord(ch)] = 1
    return flags, max(len(w) for pair in _antonyms() for w in pair)


def _differing(x: str, y: str) -> tuple[str, str]:
    """The parts of x and y between their common prefix and their common suffix."""
    prefix = 0
    while prefix < min(len(x), len(y)) and x[prefix] == y[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(x), len(y)) - prefix and x[-1 - suffix] == y[-1 - suffix]:
        suffix += 1
    return x[prefix:len(x) - suffix], y[prefix:len(y) - suffix]


def lexical_edit(x: str, y: str) -> bool:
    """Whether near-equal keys differ by an antonym swap or by script only (the checks that read words)."""
    dx, dy = _differing(x, y)
    if (dx, dy) in _antonyms():
        return True
    forms = _shared_script_forms()
    if any(ch in forms for ch in dx + dy):
        return zhconv.convert(x, "zh-cn") == zhconv.convert(y, "zh-cn")
    return False


@cache
def guarded() -> np.ndarray:
    """A flag per code point: 1 for the characters an edit must not change (see the module docstring)."""
    flags = np.zeros(0x110000, dtype=np.uint8)
    traditional = [k for k, v in zhconv.zhconv.getdict("zh-cn").items() if len(k) == 1 and k != v]
    digits = [chr(c) for c in range(0x10000) if chr(c).isdigit()]
    latin = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    for ch in [*NEGATIONS, *NUMERALS, *digits, *latin, *traditional]:
        flags[ord(ch)] = 1
    return flags


@numba.njit(cache=True, inline="always")
def _guards_equal(codes: np.ndarray, x: int, n: int, y: int, m: int, flags: np.ndarray) -> bool:
    """Whether the guarded characters of codes[x:x+n] and codes[y:y+m] are the same, in order."""
    i = j = 0
    while True:
        while i < n and flags[codes[x + i]] == 0:
            i += 1
        while j < m and flags[codes[y + j]] == 0:
            j += 1
        if i == n or j == m:
            return i == n and j == m
        if codes[x + i] != codes[y + j]:
            return False
        i += 1
        j += 1


@numba.njit(cache=True)
def _bigram_difference(codes: np.ndarray, x: int, n: int, y: int, m: int) -> int:
    """The size of the symmetric difference of the two keys' bigram multisets."""
    gx = np.empty(max(n - 1, 0), dtype=np.uint64)
    for i in range(n - 1):
        gx[i] = (np.uint64(codes[x + i]) << np.uint64(21)) | np.uint64(codes[x + i + 1])
    gy = np.empty(max(m - 1, 0), dtype=np.uint64)
    for j in range(m - 1):
        gy[j] = (np.uint64(codes[y + j]) << np.uint64(21)) | np.uint64(codes[y + j + 1])
    gx.sort()
    gy.sort()
    i = j = common = 0
    while i < len(gx) and j < len(gy):
        if gx[i] == gy[j]:
            common += 1
            i += 1
            j += 1
        elif gx[i] < gy[j]:
            i += 1
        else:
            j += 1
    return len(gx) + len(gy) - 2 * common


@numba.njit(cache=True)
def _bounded_distance(codes: np.ndarray, x: int, n: int, y: int, m: int, budget: int) -> int:
    """The Levenshtein distance of codes[x:x+n] and codes[y:y+m] if it is at most `budget`, else budget + 1.

    Diagonal transition: reach[diag] is the furthest position i in x, on diagonal diag = j - i, that d edits reach;
    each round takes one more edit, then slides along equal characters."""
    if abs(n - m) > budget:
        return budget + 1
    width = 2 * budget + 3
    prev = np.full(width, _UNREACHED, dtype=np.int64)
    for d in range(budget + 1):
        cur = np.full(width, _UNREACHED, dtype=np.int64)
        for diag in range(-d, d + 1):
            slot = diag + budget + 1
            if d == 0:
                i = 0
            else:
                i = max(prev[slot] + 1, prev[slot + 1] + 1, prev[slot - 1])  # substitute, delete, insert
                i = min(i, n, m - diag)
                if i < max(0, -diag):
                    continue
            while i < n and i + diag < m and codes[x + i] == codes[y + i + diag]:
                i += 1
            cur[slot] = i
            if diag == m - n and i >= n:
                return d
        prev = cur
    return budget + 1


@numba.njit(cache=True)
def key_similarity(codes: np.ndarray, x: int, n: int, y: int, m: int, threshold: float,
                   flags: np.ndarray) -> float:
    """1 - d / max(n, m) when the keys codes[x:x+n], codes[y:y+m] are near-duplicates (see the module docstring),
    else 0."""
    longer = max(n, m)
    if n == m:
        same = True
        for i in range(n):
            if codes[x + i] != codes[y + i]:
                same = False
                break
        if same:
            return 1.0
    budget = int((1.0 - threshold) * longer + 1e-9)
    if budget == 0 or abs(n - m) > budget or not _guards_equal(codes, x, n, y, m, flags):
        return 0.0
    if budget > _BIGRAM_BOUND_ABOVE and _bigram_difference(codes, x, n, y, m) > 4 * budget:
        return 0.0
    d = _bounded_distance(codes, x, n, y, m, budget)
    return 1.0 - d / longer if d <= budget else 0.0


@numba.njit(parallel=True, cache=True, nogil=True)
def _similarity_kernel(codes: np.ndarray, starts: np.ndarray, texts: int, parts: int, a: np.ndarray, b: np.ndarray,
                       threshold: float, flags: np.ndarray, out: np.ndarray) -> None:
    """out[k] = the lowest similarity over the parts of texts a[k] and b[k] (part p of text i is text p·texts + i),
    0 as soon as one part is not a near-duplicate."""
    for k in numba.prange(len(a)):
        lowest = 1.0
        for p in range(parts):
            x, y = p * texts + a[k], p * texts + b[k]
            lowest = min(lowest, key_similarity(codes, starts[x], starts[x + 1] - starts[x], starts[y],
                                                starts[y + 1] - starts[y], threshold, flags))
            if lowest == 0.0:
                break
        out[k] = lowest


@numba.njit(parallel=True, cache=True, nogil=True)
def _may_be_lexical(codes: np.ndarray, starts: np.ndarray, texts: int, parts: int, a: np.ndarray, b: np.ndarray,
                    pairs: np.ndarray, flags: np.ndarray, longest: int, out: np.ndarray) -> None:
    """out[r] = whether `lexical_edit` could hold for a part of pair pairs[r]: its differing middles (between the
    common prefix and suffix) are both 1 to `longest` characters (an antonym swap), or hold a flagged character."""
    for r in numba.prange(len(pairs)):
        k = pairs[r]
        hit = False
        for p in range(parts):
            x, y = p * texts + a[k], p * texts + b[k]
            xs, n, ys, m = starts[x], starts[x + 1] - starts[x], starts[y], starts[y + 1] - starts[y]
            pre = 0
            while pre < min(n, m) and codes[xs + pre] == codes[ys + pre]:
                pre += 1
            suf = 0
            while suf < min(n, m) - pre and codes[xs + n - 1 - suf] == codes[ys + m - 1 - suf]:
                suf += 1
            if 1 <= n - pre - suf <= longest and 1 <= m - pre - suf <= longest:
                hit = True
            for i in range(pre, n - suf):
                hit = hit or flags[codes[xs + i]] == 1
            for j in range(pre, m - suf):
                hit = hit or flags[codes[ys + j]] == 1
        out[r] = hit


def use_threads(workers: int) -> None:
    """Run the parallel kernels on `workers` threads (at most the threads numba was started with)."""
    numba.set_num_threads(max(1, min(workers, numba.config.NUMBA_NUM_THREADS)))


def codes_of(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """All texts' code points in one uint32 array (plus two zeros of padding), and each text's start (n + 1)."""
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    codes = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    starts = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    return np.concatenate([codes, np.zeros(2, dtype=np.uint32)]), starts


def similarity(parts: Sequence[Sequence[str]], a: np.ndarray, b: np.ndarray, threshold: float,
               workers: int = 2) -> np.ndarray:
    """For every k, the lowest similarity over `parts` (lists of keys, one per text, e.g. the queries and the
    positives of pairs) of texts a[k] and b[k]; 0 where one part is not a near-duplicate."""
    texts = len(parts[0])
    if any(len(p) != texts for p in parts):
        raise ValueError(f"parts of different lengths: {[len(p) for p in parts]}")
    codes, starts = codes_of([t for p in parts for t in p])
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    out = np.zeros(len(a))
    use_threads(workers)
    _similarity_kernel(codes, starts, texts, len(parts), a, b, threshold, guarded(), out)
    confirmed = np.flatnonzero((out >= threshold) & (out < 1))
    flags, longest = _lexical_flags()
    maybe = np.zeros(len(confirmed), dtype=np.bool_)
    _may_be_lexical(codes, starts, texts, len(parts), a, b, confirmed, flags, longest, maybe)
    for k in confirmed[maybe].tolist():  # the few pairs the word checks must read
        if any(lexical_edit(p[a[k]], p[b[k]]) for p in parts if p[a[k]] != p[b[k]]):
            out[k] = 0.0
    return out


def edit_similarity(x: str, y: str, threshold: float = 0.875) -> float:
    """`similarity` of two keys (for inspection and tests)."""
    return float(similarity([[x, y]], np.array([0]), np.array([1]), threshold, workers=1)[0])
