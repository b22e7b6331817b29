"""A user's own Python commands, as an application would write them."""

import pyvisor


@pyvisor.command("words.add")
def add_words(args, ctx):
    """Counts words of `args["text"]` into the calling session; returns the total."""
    if not isinstance(args, dict) or not isinstance(args.get("text"), str):
        raise pyvisor.BadRequest("expected {text: str}")
    counts = ctx.session.setdefault("counts", {})
    for word in args["text"].lower().split():
        counts[word] = counts.get(word, 0) + 1
    return sum(counts.values())


@pyvisor.command("words.top")
def top_words(args, ctx):
    """The session's most frequent words: [[word, count], ...]."""
    n = int(args.get("n", 3)) if isinstance(args, dict) else 3
    counts = ctx.session.get("counts", {})
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


@pyvisor.command("words.each")
def each_word(args, ctx):
    n = 0
    for w in args["text"].split():
        yield w                     # sent now, not at the end
        n += 1
    return n
