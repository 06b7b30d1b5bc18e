"""Token budget: each row's length under the target model's tokenizer and chat template.

The template is rendered once per conversation shape (the sequence of roles) with marker
contents, which gives the fixed text around each message; a row's rendered text is then
those pieces with its contents put in, exactly what `apply_chat_template` renders for
templates that insert contents verbatim (checked on the markers; other templates fall back
to `apply_chat_template` for every row).

Tokenising every row of a large dataset would dominate data prep, so rows are tokenised
only where it matters: with a byte-level tokenizer a text never has more tokens than UTF-8
bytes, so a row whose rendered text has at most `max_tokens` bytes fits without counting.
That bound is checked against exact counts on the first rows and dropped if it ever fails.
The length histogram comes from exact counts of a uniform sample (`Reservoir`) of the kept rows.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

_MARK = "\x00\x01{}\x01\x00"
_CHECK_ROWS = 256  # rows counted exactly to check the bytes bound


@dataclass
class TokenStats:
    max_tokens: int
    action: str
    over_budget: int = 0
    truncated: int = 0
    dropped: int = 0
    counted_exactly: int = 0


class Reservoir:
    """A uniform sample of a stream (Algorithm R), reproducible from its seed."""

    def __init__(self, size: int, seed: int = 0):
        self.size, self.seen, self.items = size, 0, []
        self._rng = random.Random(seed)

    def offer(self, item) -> None:
        self.offer_many((item,))

    def offer_many(self, items: Sequence) -> None:
        """Offer each of `items` in turn; an item is only read if the sample takes it."""
        size, sample, seen = self.size, self.items, self.seen
        getrandbits = self._rng.getrandbits
        for k in range(len(items)):
            seen += 1
            if len(sample) < size:
                sample.append(items[k])
                continue
            # random.randrange(seen) as CPython draws it (_randbelow_with_getrandbits), inlined:
            # the same sample for a seed, without two Python calls a row
            bits = seen.bit_length()
            j = getrandbits(bits)
            while j >= seen:
                j = getrandbits(bits)
            if j < size:
                sample[j] = items[k]
        self.seen = seen


class ChatRenderer:
    """Renders conversations with a tokenizer's chat template, cheaply."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._skeletons: dict[tuple, Optional[list[str]]] = {}
        self._fixed: dict[int, int] = {}

    def _skeleton(self, roles: tuple, generation_prompt: bool) -> Optional[list[str]]:
        key = (roles, generation_prompt)
        if key not in self._skeletons:
            self._skeletons[key] = self._build(roles, generation_prompt)
        return self._skeletons[key]

    def _build(self, roles: tuple, generation_prompt: bool) -> Optional[list[str]]:
        def render(fmt: str) -> str:
            messages = [{"role": role, "content": fmt.format(i)} for i, role in enumerate(roles)]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

        try:
            text = render(_MARK)
            other = render("\x00\x01{}\x01\x00 \x00")  # longer contents: a verbatim template shifts nothing else
        except Exception:
            return None
        pieces, rest = [], text
        for i in range(len(roles)):
            before, mark, rest = rest.partition(_MARK.format(i))
            if not mark:
                return None
            pieces.append(before)
        pieces.append(rest)
        expected = "".join(p + ("\x00\x01{}\x01\x00 \x00".format(i) if i < len(roles) else "")
                           for i, p in enumerate(pieces))
        return pieces if expected == other else None

    def size(self, messages: list[dict]) -> int:
        """UTF-8 bytes of the rendered conversation, without building the string."""
        pieces = self._skeleton(tuple(m["role"] for m in messages), False)
        if pieces is None:
            return len(self.render(messages).encode("utf-8", "surrogatepass"))
        key = id(pieces)
        fixed = self._fixed.get(key)
        if fixed is None:
            fixed = self._fixed[key] = sum(len(p.encode("utf-8")) for p in pieces)
        return fixed + sum(len(c) if c.isascii() else len(c.encode("utf-8", "surrogatepass"))
                           for c in (m["content"] for m in messages))

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        pieces = self._skeleton(tuple(m["role"] for m in messages), generation_prompt)
        if pieces is None:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        out = [pieces[0]]
        for message, piece in zip(messages, pieces[1:]):
            out += [message["content"], piece]
        return "".join(out)


class ChatTokenizer:
    """A model's fast tokenizer (tokenizer.json) and chat template, without transformers.

    Renders templates the way transformers' `apply_chat_template` does (a sandboxed jinja2
    environment with trim_blocks, lstrip_blocks, loop controls, `tojson` and
    `raise_exception`) and tokenises with the `tokenizers` library, so data prep neither
    imports torch nor spends seconds loading transformers.
    """

    def __init__(self, model_dir: str | Path):
        import json

        from tokenizers import Tokenizer

        folder = Path(model_dir)
        if not (folder / "tokenizer.json").is_file():
            raise ValueError(f"{folder}: no tokenizer.json (a fast tokenizer is needed)")
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates: use the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        if not template:
            raise ValueError(f"{folder}: the tokenizer has no chat template")
        self.chat_template = template
        self.special = {key: (value["content"] if isinstance(value, dict) else value)
                        for key, value in config.items() if key.endswith("_token") and value}
        self._template = _jinja_env().from_string(template)

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = False):
        text = self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.special)
        return self(text)["input_ids"] if tokenize else text

    def __call__(self, texts, add_special_tokens: bool = False) -> dict:
        if isinstance(texts, str):
            return {"input_ids": self.tokenizer.encode(texts, add_special_tokens=add_special_tokens).ids}
        return {"input_ids": [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)]}

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def _jinja_env():
    import json
    from datetime import datetime

    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def load_tokenizer(model_dir: str | Path) -> ChatTokenizer:
    return ChatTokenizer(model_dir)


class TokenBudget:
    """Measures rows and drops or truncates those over `max_tokens`."""

    def __init__(self, tokenizer, max_tokens: int, action: str = "drop"):
        if action not in ("drop", "truncate"):
            raise ValueError(f"token budget action must be drop or truncate, got {action!r}")
        self.tokenizer = tokenizer
        self.renderer = ChatRenderer(tokenizer)
        self.stats = TokenStats(max_tokens=max_tokens, action=action)
        self._bytes_bound_ok = True
        self._checked = 0

    def count(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        self.stats.counted_exactly += len(texts)
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def apply(self, rows: list[list[dict]]) -> list[Optional[list[dict]]]:
        """Each row as it fits the budget (maybe truncated), or None where it is dropped."""
        max_tokens = self.stats.max_tokens
        sizes = [self.renderer.size(m) for m in rows]
        if self._checked < _CHECK_ROWS:
            take = min(len(rows), _CHECK_ROWS - self._checked)
            exact = self.count([self.renderer.render(m) for m in rows[:take]])
            self._bytes_bound_ok &= all(n <= b for n, b in zip(exact, sizes))
            self._checked += take
        if self._bytes_bound_ok:
            unsure = [i for i, b in enumerate(sizes) if b > max_tokens]
        else:
            unsure = list(range(len(rows)))
        lengths = dict(zip(unsure, self.count([self.renderer.render(rows[i]) for i in unsure])))
        out: list[Optional[list[dict]]] = []
        for i, messages in enumerate(rows):
            n = lengths.get(i, 0)
            if n > max_tokens:
                self.stats.over_budget += 1
                messages = self._truncate(messages, n) if self.stats.action == "truncate" else None
                if messages is None:
                    self.stats.dropped += 1
                    out.append(None)
                    continue
                self.stats.truncated += 1
            out.append(messages)
        return out

    def _truncate(self, messages: list[dict], length: int) -> Optional[list[dict]]:
        """Cut the start of the last user message (keeping the question nearest the answer)."""
        user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if user is None:
            return None
        for _ in range(3):  # re-tokenising the cut text can shift a token or two
            ids = self.tokenizer(messages[user]["content"], add_special_tokens=False)["input_ids"]
            over = length - self.stats.max_tokens
            if over >= len(ids):
                return None
            content = self.tokenizer.decode(ids[over + 1:]).lstrip()
            if not content:
                return None
            messages = [dict(m) for m in messages]
            messages[user]["content"] = content
            length = self.count([self.renderer.render(messages)])[0]
            if length <= self.stats.max_tokens:
                return messages
        return None

    def lengths(self, conversations: list[list[dict]]) -> list[int]:
        """Exact token counts of whole conversations, chat template included."""
        texts = [self.renderer.render(m) for m in conversations]
        return [n for start in range(0, len(texts), 512) for n in self.count(texts[start:start + 512])]
