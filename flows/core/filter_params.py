"""The quality filters' thresholds (FilterParams): light to import, so that the build's parameters and the CLI's
start-up do not load the filter stage."""

from pydantic import BaseModel, ConfigDict, Field

from m3e_hq.schemas.enums import TaskType

# Refusals and AI disclaimers of instruction sets, matched on the normalised positive: punctuation, width and case
# do not matter ("抱歉,我无法" also matches it written with a full-width comma). Self-descriptions are kept specific
# ("我是一个AI语言模型", not "我是一个AI") so that a human answer such as "我是一个AI工程师" or a company
# "作为一个人工智能企业" is not taken for one.
DEFAULT_BOILERPLATE_PHRASES = (
    "作为一个AI语言模型",
    "作为AI语言模型",
    "作为一个人工智能语言模型",
    "作为人工智能语言模型",
    "作为一个语言模型",
    "作为一个AI助手",
    "作为一个人工智能助手",
    "作为一个AI,我",
    "作为一个人工智能,我",
    "我是一个AI语言模型",
    "我是一个AI助手",
    "我是一个人工智能语言模型",
    "我是一个人工智能助手",
    "我只是一个AI",
    "我只是一个人工智能",
    "我只是一个语言模型",
    "抱歉,我无法",
    "抱歉,我不能",
    "对不起,我无法",
    "As an AI language model",
    "As an AI assistant",
    "I am an AI language model",
    "I'm sorry, but I cannot",
)


class FilterParams(BaseModel):
    """Thresholds of the quality filters, one or two per reason code.

    Defaults suit short Chinese pairs: 1-character titles and answers (s2p) and 2-character sentences (s2s) are kept.
    Minimum lengths count letters and digits (after `normalize`), maximum lengths count characters.
    """

    model_config = ConfigDict(extra="forbid")

    s2s_query_min_chars: int = Field(2, ge=0, description="s2s: fewest letters/digits in text (idioms have 4)")
    s2s_query_max_chars: int = Field(512, ge=1, description="s2s: most characters in text (a sentence, not a page)")
    s2s_pos_min_chars: int = Field(2, ge=0, description="s2s: fewest letters/digits in text_pos")
    s2s_pos_max_chars: int = Field(512, ge=1, description="s2s: most characters in text_pos")
    s2p_query_min_chars: int = Field(1, ge=0, description="s2p: fewest letters/digits in text (one-ideograph titles "
                                     "such as '茶' head real passages)")
    s2p_query_max_chars: int = Field(4_000, ge=1, description="s2p: most characters in text (an instruction can "
                                     "hold a document)")
    s2p_pos_min_chars: int = Field(1, ge=0, description="s2p: fewest letters/digits in text_pos (one-character "
                                   "answers such as 'O' or '7' are real answers)")
    s2p_pos_max_chars: int = Field(10_000, ge=1, description="s2p: most characters in text_pos (a long article)")
    query_in_positive_min_coverage: float = Field(
        0.85, ge=0, le=1, description="s2s: drop a pair when one normalised side is contained in the other and "
        "covers at least this share of it (0 drops any containment)")
    query_in_positive_max_extra_chars: int = Field(
        2, ge=0, description="s2s: also drop a pair when one normalised side is contained in the other and the "
        "other has at most this many letters/digits more, whatever the coverage: a short side plus a particle or a "
        "word of one or two characters ('云集景附' / '云集景附吗' covers 0.80, '工作很轻松' / '我的工作很轻松' 0.71). "
        "It matters only for sides under 12 characters (from 12 on, two more still cover 0.85); 3 would drop real "
        "additions ('狗为什么怕水' / '狗为什么怕水不怕雨'). 0: coverage only")
    answer_min_new_chars: int = Field(
        3, ge=0, description="s2p: when the positive contains the query, the fewest letters/digits it must hold "
        "besides the query's")
    max_mojibake: int = Field(0, ge=0, description="most mojibake markers (U+FFFD, 'ï¼', 'â€', 'Ã', runs of "
                              "Latin-1 characters, '锟斤拷') allowed per side")
    max_markup: int = Field(2, ge=0, description="most HTML/XML tags, HTML entities and markdown links/images "
                            "allowed per side, outside code blocks")
    max_markup_per_1000_chars: float = Field(
        5.0, ge=0, description="a long side may hold up to this many markup hits per 1,000 characters when that is "
        "more than max_markup (a few stray <br> in a long passage do not drop it)")
    boilerplate_phrases: tuple[str, ...] = Field(
        DEFAULT_BOILERPLATE_PHRASES, description="refusal / AI-disclaimer phrases; a positive containing one is "
        "dropped (compared after `normalize`)")
    max_char_run: int = Field(10, ge=1, description="most times a letter or ideograph may repeat in a row "
                              "(digits may repeat: 1000000)")
    repetition_ngram: int = Field(3, ge=1, le=3, description="n of the character n-grams of the repetition check "
                                  "(small, for short texts; at most 3)")
    max_ngram_dup_share: float = Field(
        0.5, ge=0, le=1, description="highest share of a side's character n-grams (after `normalize`) that repeat an "
        "earlier one: 0.5 keeps colloquial repeats such as '好多好多好多' and a text said twice (real passages stay "
        "under 0.35); loops said three times or more go")
    min_cjk_ratio: float = Field(
        0.3, ge=0, le=1, description="lowest share of CJK ideographs among the letter units of text_pos (see also "
        "cjk_either_side_task_types): an "
        "ideograph, kana or Hangul syllable, or a run of other letters such as a Latin word, outside code; "
        "texts that look like source code are not checked")
    cjk_min_units: int = Field(4, ge=1, description="text_pos with fewer letter units is not CJK-checked (short "
                               "answers such as 'NBA', 'iPhone 6')")
    cjk_exempt_task_types: tuple[TaskType, ...] = Field(
        (TaskType.NL2SQL,), description="task types whose positives are not CJK-checked (SQL)")
    cjk_either_side_task_types: tuple[TaskType, ...] = Field(
        (TaskType.INSTRUCTION,), description="task types whose language check passes when either side is Chinese, "
        "not only the positive: an instruction may ask for a translation from or into Chinese")
    min_pair_score: float | None = Field(
        None, description="teacher score below which a pair is dropped (needs the scores of the mining stage)")
