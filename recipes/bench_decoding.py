"""Constrained decoding speed vs catalog size: compiled-trie processor vs per-beam Python callback vs unconstrained.

Synthetic semantic-ID catalogs (3 levels x 256 codes + a collision digit, skewed codes so prefixes are shared as
with RQ-k-means), a tiny random T5 built from its config (nothing is downloaded) and random queries. For every size
and beam width, the three decoders run on the same query batches, interleaved batch by batch in rotating order;
results are ratios measured in one run, on CPU time of this process (wall time is recorded too)::

    OMP_NUM_THREADS=1 python recipes/bench_decoding.py --sizes 1e3 1e4 1e5 1e6 --beams 10 20 --queries 512 \
        --output runs/bench_decoding/bench_decoding.json

The Python-callback baseline (GENRE's ``prefix_allowed_tokens_fn`` over a nested-dict trie) is slow, so it runs on
at most ``--callback-queries`` queries and is skipped above ``--callback-max-items`` (both recorded in the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

METHODS = ("unconstrained", "processor", "callback")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=lambda s: int(float(s)), default=[1000, 10_000, 100_000, 1_000_000],
                   help="catalog sizes (1e3 notation allowed)")
    p.add_argument("--beams", nargs="+", type=int, default=[10, 20], help="beam widths")
    p.add_argument("--queries", type=int, default=64, help="queries per size and beam width")
    p.add_argument("--batch-size", type=int, default=64, help="queries per generate() call (retrieve's default)")
    p.add_argument("--callback-queries", type=int, default=32, help="cap on queries for the Python callback")
    p.add_argument("--callback-max-items", type=lambda s: int(float(s)), default=1_000_000,
                   help="skip the Python callback for larger catalogs (its trie build alone takes seconds)")
    p.add_argument("--text-vocab", type=int, default=1000, help="text tokens before the ID tokens")
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    p.add_argument("--source-length", type=int, default=16, help="tokens per random query")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=Path("bench_decoding.json"), help="JSON results file")
    args = p.parse_args(argv)
    for name in ("queries", "batch_size", "callback_queries", "text_vocab", "d_model", "layers", "source_length"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for size in args.sizes:
        if size < 1:
            p.error(f"--sizes must be positive, got {size}")
    for beams in args.beams:
        if beams < 1:
            p.error(f"--beams must be positive, got {beams}")
    return args


# ---- synthetic catalog -------------------------------------------------------------------------------------------
def synthetic_codes(num_items: int, levels: int = 3, codebook: int = 256, skew: float = 1.5,
                    seed: int = 0) -> torch.LongTensor:
    """``[num_items, levels + 1]`` distinct semantic codes: skewed codes per level plus a collision digit.

    Each level's code is a per-prefix hash plus an offset drawn with density falling as ``u ** skew``, so popular
    prefixes are shared by many items as with residual quantisation; with ``skew=1.5`` about 5% of 1e6 items collide
    on all ``levels`` codes (max collision digit ~16).
    """
    gen = torch.Generator().manual_seed(seed)
    codes = torch.zeros(num_items, levels + 1, dtype=torch.long)
    prefix_hash = torch.zeros(num_items, dtype=torch.long)
    for level in range(levels):
        offset = (codebook * torch.rand(num_items, generator=gen) ** skew).long()
        codes[:, level] = (prefix_hash * 2654435761 + offset) % codebook
        prefix_hash = (prefix_hash * 1000003 + codes[:, level] + 1) % (2**40)
    # Collision digit: rank of the item among those sharing all `levels` codes.
    key = torch.zeros(num_items, dtype=torch.long)
    for level in range(levels):
        key = key * codebook + codes[:, level]
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    first = torch.ones(num_items, dtype=torch.bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    index = torch.arange(num_items)
    group_start = torch.cummax(torch.where(first, index, torch.zeros_like(index)), 0).values
    codes[order, levels] = index - group_start
    return codes


def to_token_ids(codes: torch.LongTensor, text_vocab: int, codebook: int = 256) -> tuple[torch.LongTensor, int]:
    """Token ids with one token range per level after the text vocabulary; returns them and the vocabulary size."""
    levels = codes.shape[1] - 1
    starts = [text_vocab + codebook * level for level in range(levels)] + [text_vocab + codebook * levels]
    vocab = starts[-1] + int(codes[:, -1].max()) + 1
    return codes + torch.tensor(starts), vocab


class DictTrie:
    """GENRE's trie: nested dicts token -> subtree, one Python dict walk per beam and step."""

    def __init__(self, sequences: list[list[int]]):
        self.root: dict[int, dict] = {}
        for sequence in sequences:
            node = self.root
            for token in sequence:
                node = node.setdefault(token, {})

    def get(self, prefix: list[int]) -> list[int]:
        """Tokens that may follow ``prefix`` (empty if it is not in the trie)."""
        node = self.root
        for token in prefix:
            node = node.get(token)
            if node is None:
                return []
        return list(node)


def callback_fn(trie: DictTrie, eos: int, id_length: int) -> Callable[[int, torch.Tensor], list[int]]:
    """``prefix_allowed_tokens_fn`` as GENRE writes it: decoder start token dropped, eos after a complete ID."""

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        """Allowed next tokens of one beam (``batch_id`` unused: one catalog for all queries)."""
        prefix = input_ids.tolist()[1:]
        if len(prefix) >= id_length:
            return [eos]
        return trie.get(prefix) or [eos]

    return allowed


def time_from_scheme(raw: torch.LongTensor, text_vocab: int, expected: torch.LongTensor) -> float:
    """Seconds of ``ItemTrie.from_scheme`` (token lookup + build) for a SemanticIdScheme over ``raw`` codes.

    The tokenizer is an in-memory T5 one with ``text_vocab`` pieces and the scheme's tokens added, so token ids match
    :func:`to_token_ids`; the trie's codes are checked against ``expected``.
    """
    from transformers import T5Tokenizer

    from genretrieval.decoding import ItemTrie
    from genretrieval.ids.semantic import SemanticIdScheme

    sizes = [256] * (raw.shape[1] - 1) + [int(raw[:, -1].max()) + 1]
    scheme = SemanticIdScheme([f"i{p}" for p in range(len(raw))], raw.numpy(), codebook_sizes=sizes)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(f"▁w{i}", -1.0) for i in range(text_vocab - 3)]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0)
    tokenizer.add_tokens(scheme.new_tokens())
    start = time.perf_counter()
    trie = ItemTrie.from_scheme(scheme, tokenizer)
    seconds = time.perf_counter() - start
    if not torch.equal(trie.codes, expected):
        raise RuntimeError("from_scheme gave other token ids than the benchmark's own mapping")
    return seconds


# ---- model -------------------------------------------------------------------------------------------------------
def tiny_t5(vocab_size: int, d_model: int, layers: int, seed: int) -> torch.nn.Module:
    """Random T5 from its config (pad 0, eos 1, decoder start = pad)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, d_model=d_model, d_ff=4 * d_model, d_kv=d_model // 4, num_heads=4,
                      num_layers=layers, num_decoder_layers=layers, pad_token_id=0, eos_token_id=1,
                      decoder_start_token_id=0, feed_forward_proj="relu", tie_word_embeddings=True)
    return T5ForConditionalGeneration(config).eval()


def generate(model: torch.nn.Module, input_ids: torch.Tensor, beams: int, id_length: int, **extra: Any) -> torch.Tensor:
    """The beam search every method shares (``retrieve``'s settings); returns the sequences."""
    kwargs: dict[str, Any] = {"early_stopping": True, "length_penalty": 0.0} if beams > 1 else {}
    return model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), num_beams=beams,
                          num_return_sequences=beams, max_new_tokens=id_length + 1, do_sample=False,
                          eos_token_id=1, pad_token_id=0, output_scores=True, return_dict_in_generate=True,
                          **kwargs, **extra).sequences


class TimedProcessor:
    """Wraps a logits processor and adds up the CPU time spent inside it (the constraint's own cost)."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.seconds = 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """The wrapped processor's output; its CPU time is added to :attr:`seconds`."""
        start = time.process_time()
        out = self.inner(input_ids, scores)
        self.seconds += time.process_time() - start
        return out


def environment() -> dict[str, Any]:
    """Versions, threads and CPU of this run (other jobs on the machine are not controlled: see the load)."""
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


# ---- benchmark ---------------------------------------------------------------------------------------------------
def bench_size(size: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows (one per beam width) for a catalog of ``size`` items."""
    from transformers import LogitsProcessorList, PrefixConstrainedLogitsProcessor

    from genretrieval.decoding import ItemTrie, TrieConstrainedLogitsProcessor

    raw = synthetic_codes(size, seed=args.seed)
    codes, vocab = to_token_ids(raw, args.text_vocab)
    id_length = codes.shape[1]
    start = time.perf_counter()
    trie = ItemTrie(codes, eos_token_id=1)
    build_s = time.perf_counter() - start
    from_scheme_s = time_from_scheme(raw, args.text_vocab, codes)
    processor = TrieConstrainedLogitsProcessor(trie, pad_token_id=0)

    run_callback = size <= args.callback_max_items
    callback_build_s = None
    if run_callback:
        start = time.perf_counter()
        dict_trie = DictTrie(codes.tolist())
        callback_build_s = time.perf_counter() - start

    model = tiny_t5(vocab, args.d_model, args.layers, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    queries = torch.randint(3, args.text_vocab, (args.queries, args.source_length), generator=gen)
    batches = list(queries.split(args.batch_size))
    callback_batches = max(1, -(-min(args.callback_queries, args.queries) // args.batch_size)) if run_callback else 0

    rows = []
    for beams in args.beams:
        if beams > size:
            continue
        # The callback goes through HF's own PrefixConstrainedLogitsProcessor, exactly what
        # generate(prefix_allowed_tokens_fn=...) builds, so that its time inside the processor can be measured too.
        timed = {"processor": TimedProcessor(processor)}
        if run_callback:
            callback = callback_fn(dict_trie, 1, id_length)
            timed["callback"] = TimedProcessor(PrefixConstrainedLogitsProcessor(callback, beams))
        extra = {"unconstrained": {}, **{m: {"logits_processor": LogitsProcessorList([t])} for m, t in timed.items()}}
        with torch.inference_mode():
            for method in extra:  # warm-up: first calls allocate caches and pick kernels
                generate(model, batches[0][:2], beams, id_length, **extra[method])
            for t in timed.values():
                t.seconds = 0.0
            seconds: dict[str, list[float | None]] = {m: [] for m in METHODS}  # CPU seconds per batch, None = not run
            wall = {m: 0.0 for m in METHODS}
            counted = {m: 0 for m in METHODS}
            valid = agree = compared = total = 0
            for index, batch in enumerate(batches):
                # Interleaved per batch, in rotating order, so that load from other processes and cache effects of
                # the previous run hit every method alike.
                outputs = {}
                order = list(extra)
                for method in METHODS:
                    seconds[method].append(None)
                for method in order[index % len(order) :] + order[: index % len(order)]:
                    if method == "callback" and index >= callback_batches:
                        continue
                    start, start_wall = time.process_time(), time.perf_counter()
                    outputs[method] = generate(model, batch, beams, id_length, **extra[method])
                    seconds[method][-1] = time.process_time() - start
                    wall[method] += time.perf_counter() - start_wall
                    counted[method] += len(batch)
                found = trie.lookup(outputs["processor"][:, 1 : 1 + id_length])
                valid += int((found >= 0).sum())
                total += len(found)
                if "callback" in outputs:
                    same = outputs["callback"].shape == outputs["processor"].shape
                    agree += int((outputs["callback"] == outputs["processor"]).all(1).sum()) if same else 0
                    compared += len(found)
        inside = {m: 1000 * t.seconds / counted[m] for m, t in timed.items()}
        ms = {m: 1000 * sum(x for x in seconds[m] if x is not None) / counted[m] if counted[m] else None
              for m in METHODS}
        paired = {m: _paired(seconds[m], seconds["unconstrained"]) for m in ("processor", "callback")}
        # End-to-end overheads on the batches all three methods ran (the callback's capped subset): same queries.
        common = [i for i, x in enumerate(seconds["callback"]) if x is not None]
        overhead = {m: sum(seconds[m][i] - seconds["unconstrained"][i] for i in common)
                    for m in ("processor", "callback")}
        rows.append({
            "items": size, "beams": beams, "id_length": id_length, "vocab_size": vocab,
            "queries": {m: counted[m] for m in METHODS},
            "ms_per_query": ms,
            "wall_ms_per_query": {m: 1000 * wall[m] / counted[m] if counted[m] else None for m in METHODS},
            "constraint_ms_per_query": {m: inside.get(m) for m in ("processor", "callback")},
            "constraint_ratio_callback_over_processor": (inside["callback"] / inside["processor"]
                                                         if "callback" in inside else None),
            # Sum of the method's batch times over the unconstrained times of the same batches.
            "ratio_to_unconstrained": {m: paired[m][0] for m in paired},
            # Median over batches of the per-batch ratio: robust to a batch slowed down by other jobs.
            "median_batch_ratio_to_unconstrained": {m: paired[m][1] for m in paired},
            "overhead_ms_per_query_on_callback_queries": {m: 1000 * v / max(1, sum(len(batches[i]) for i in common))
                                                          for m, v in overhead.items()} if common else None,
            # The processor's overhead can be within timing noise of zero or below; the ratio is then None.
            "callback_overhead_over_processor_overhead": (overhead["callback"] / overhead["processor"]
                                                          if common and overhead["processor"] > 0 else None),
            "processor_outputs_valid": valid / total,
            "processor_equals_callback": agree / compared if compared else None,
            "trie_build_s": build_s, "trie_from_scheme_s": from_scheme_s, "trie_bytes": trie.nbytes,
            "trie_bytes_per_item": trie.nbytes / size,
            "trie_dense_depth": trie.dense_depth, "callback_trie_build_s": callback_build_s,
            "callback_skipped": not run_callback,
        })  # fmt: skip
    return rows


def _paired(method: list[float | None], floor: list[float | None]) -> tuple[float | None, float | None]:
    pairs = [(m, f) for m, f in zip(method, floor) if m is not None and f is not None]
    if not pairs:
        return None, None
    ratios = sorted(m / f for m, f in pairs)
    return sum(m for m, _ in pairs) / sum(f for _, f in pairs), statistics.median(ratios)


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the rows (CPU ms per query)."""

    def f(value: float | None, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    lines = ["| items | beams | unconstr. ms/q | processor ms/q | callback ms/q | processor / unconstr. (median) | "
             "callback / unconstr. | overhead ratio end-to-end | constraint ms/q processor | constraint ms/q callback "
             "| constraint ratio | trie build s | from scheme s | trie B/item |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ms, ratio, inside = r["ms_per_query"], r["ratio_to_unconstrained"], r["constraint_ms_per_query"]
        median = r["median_batch_ratio_to_unconstrained"]
        over = r["callback_overhead_over_processor_overhead"]
        over_text = f(over, ".0f") if over is not None else ("processor ≤ floor" if ms["callback"] else "–")
        lines.append(
            f"| {r['items']:.0e} | {r['beams']} | {f(ms['unconstrained'], '.2f')} | {f(ms['processor'], '.2f')} | "
            f"{f(ms['callback'], '.2f')} | {f(ratio['processor'], '.3f')} ({f(median['processor'], '.3f')}) | "
            f"{f(ratio['callback'], '.2f')} | "
            f"{over_text} | {f(inside['processor'], '.3f')} | {f(inside['callback'], '.2f')} | "
            f"{f(r['constraint_ratio_callback_over_processor'], '.0f')} | {r['trie_build_s']:.2f} | "
            f"{r['trie_from_scheme_s']:.2f} | "
            f"{r['trie_bytes_per_item']:.1f} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run every size and beam width, print the table and write the JSON to ``args.output``."""
    from genretrieval.fileio import atomic_write_text

    threads = os.environ.get("OMP_NUM_THREADS")
    if threads and threads.isdigit():
        torch.set_num_threads(int(threads))
    report: dict[str, Any] = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "environment": environment(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": ["run with OMP_NUM_THREADS=1 on a shared machine: other jobs may be running (see "
                  "environment.load_average_at_start); methods are interleaved per batch so load hits them alike",
                  "ms_per_query is CPU time of this process (time.process_time), robust to other jobs on the machine; "
                  "wall_ms_per_query is wall-clock time",
                  "constraint_ms_per_query is CPU time spent inside the logits processor alone",
                  f"the Python callback runs on at most {args.callback_queries} queries per row",
                  f"the Python callback is skipped for catalogs above {args.callback_max_items} items"],
        "rows": [],
    }
    for size in args.sizes:
        report["rows"] += bench_size(size, args)
        print(format_table([r for r in report["rows"] if r["items"] == size]).split("\n", 2)[-1], flush=True)
    table = format_table(report["rows"])
    report["table_markdown"] = table
    atomic_write_text(args.output, json.dumps(report, indent=2))
    print(table)
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main(parse_args())
