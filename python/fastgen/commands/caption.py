"""`fastgen caption ENGINE_DIR IMAGE... [--beams N --max-new-tokens N --prompt TEXT --json]`."""

from __future__ import annotations

import argparse
import json

from .common import add_backend_arguments, load_options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("engine_dir", help="a captioning engine directory (fastgen export of a captioner)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--prompt", default=None, help="text the caption starts with (BLIP conditional captioning)")
    p.add_argument("--beams", type=int, default=1, help="beam width (1: greedy)")
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--length-penalty", type=float, default=1.0)
    p.add_argument("--no-repeat-ngram-size", type=int, default=0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--num-return-sequences", type=int, default=1)
    p.add_argument("--early-stopping", choices=("false", "true", "never"), default="false")
    add_backend_arguments(p)
    p.add_argument("--json", action="store_true", help="print a JSON list of {image, caption, token_ids}")


def run(args: argparse.Namespace) -> int:
    from ..pipelines.base import Pipeline

    pipe = Pipeline.load(args.engine_dir, **load_options(args))
    if pipe.kind != "captioning":
        from ..errors import InvalidArgumentError

        raise InvalidArgumentError(f"{args.engine_dir} is a {pipe.manifest.kind!r} engine, not a captioning engine")
    early = {"false": False, "true": True, "never": "never"}[args.early_stopping]
    out = pipe(list(args.images), prompt=args.prompt, max_new_tokens=args.max_new_tokens, num_beams=args.beams,
               length_penalty=args.length_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
               early_stopping=early, num_return_sequences=args.num_return_sequences,
               repetition_penalty=args.repetition_penalty)
    k = args.num_return_sequences
    rows = [{"image": args.images[i // k], "caption": t, "token_ids": ids}
            for i, (t, ids) in enumerate(zip(out.texts, out.token_ids))]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['image']}\t{r['caption']}")
    return 0
