"""`recsys recommend`: recommendations for one user from a running model server.

    recsys recommend --user 42 --k 10 [--history 50,172,133] [--target localhost:8500]
        [--exclude 1,2] [--filter item_genres=Comedy] [--diversity 0.3] [--no-rank] [--json]
        [--recommender-model none] [--root-cert-file ca.pem] [--token-file token.txt] [--explain-score]

One Predict on the one-call model of the retrieval model (`recommender` for
`retrieval`) where the server has it; the two stages in the client otherwise
(serving/client.py). --explain-score adds a column with the three feature groups that
contributed most to each item's ranking score (one more Predict, on the ranking model's
explain signature; gradient x input, signed: + pushed the item up).

Also `python -m serving.recommend_cli ...`. Exit status: 0 ok, 1 the server call
failed, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

DEFAULT_TARGET = os.environ.get("RECSYS_TARGET", "localhost:8500")
DEFAULT_ROOT_CERT_FILE = os.environ.get("RECSYS_ROOT_CERT_FILE")
DEFAULT_TOKEN_FILE = os.environ.get("RECSYS_TOKEN_FILE")
_TITLE_WIDTH = 40
_REASON_WIDTH = 60


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _key_value(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key.strip(), val.strip()


def build_parser() -> argparse.ArgumentParser:
    from serving import names

    p = argparse.ArgumentParser(prog="recsys recommend", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--user", required=True, help="user id (unknown ids get history-based or popular items)")
    p.add_argument("--k", type=int, default=10, help="items to return (default 10)")
    p.add_argument("--history", type=_csv, default=None,
                   help="comma-separated recent item ids, oldest first (default: the user's stored history)")
    p.add_argument("--target", default=DEFAULT_TARGET, help=f"model server gRPC host:port (default {DEFAULT_TARGET}; env RECSYS_TARGET)")
    p.add_argument("--exclude", type=_csv, action="append", default=[], help="comma-separated item ids to leave out (repeatable)")
    p.add_argument("--filter", type=_key_value, action="append", default=[], metavar="FEATURE=VALUE",
                   help="keep items whose feature holds VALUE (e.g. item_genres=Comedy; 'a|b' = any of; repeat to AND)")
    p.add_argument("--diversity", type=float, default=0.0, help="0..1 MMR diversity (default 0: plain ranking)")
    p.add_argument("--no-rank", action="store_true", help="skip the ranking model (retrieval order)")
    p.add_argument("--rank-by", choices=("engagement", "rating", "blend"), default="engagement")
    p.add_argument("--num-candidates", type=int, default=100, help="retrieval candidates to rank (default 100)")
    p.add_argument("--include-history", action="store_true", help="do not drop the history items")
    p.add_argument("--hour-of-day", type=int, default=None)
    p.add_argument("--day-of-week", type=int, default=None, help="0 = Monday")
    p.add_argument("--user-feature", type=_key_value, action="append", default=[], metavar="NAME=VALUE",
                   help="a user side feature (e.g. gender=F or user_age=31; repeatable)")
    p.add_argument("--retrieval-model", default=names.RETRIEVAL_MODEL,
                   help=f"retrieval model name (default {names.RETRIEVAL_MODEL}; or {names.RETRIEVAL_BRUTE_FORCE_MODEL})")
    p.add_argument("--ranking-model", default=names.RANKING_MODEL)
    p.add_argument("--recommender-model", default="auto",
                   help="one-call model (default auto: the one wrapping --retrieval-model, two stages where it is "
                        "not served; none: always the two stages)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per call, retries included (default 5)")
    p.add_argument("--root-cert-file", default=DEFAULT_ROOT_CERT_FILE, metavar="PEM",
                   help="PEM root certificate(s) to verify the server with; turns TLS on (env RECSYS_ROOT_CERT_FILE)")
    p.add_argument("--token-file", default=DEFAULT_TOKEN_FILE, metavar="FILE",
                   help="file holding the server's shared token (env RECSYS_TOKEN_FILE)")
    p.add_argument("--no-explain", action="store_true", help="skip the reasons")
    p.add_argument("--explain-score", action="store_true",
                   help="also show the top 3 feature groups behind each ranking score (gradient x input; "
                        "one extra call to the ranking model's explain signature)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_factors(factors) -> str:
    """[("item_id", 0.4), ("item_genres", -0.25)] -> "item_id +0.40, item_genres -0.25"."""
    return ", ".join(f"{group} {value:+.2f}" for group, value in factors)


def format_table(recs) -> str:
    """A fixed-width table: rank, item, title, score, rating, engagement, reason (+ score factors
    when any item has them)."""
    header = ("#", "item", "title", "score", "rating", "engagement", "reason")
    rows = [(str(i), r.item_id, _cut(r.title or "", _TITLE_WIDTH), _fmt(r.score), _fmt(r.rating, 2),
             _fmt(r.engagement), _cut(r.reason, _REASON_WIDTH)) for i, r in enumerate(recs, 1)]
    if any(r.score_factors for r in recs):
        header += ("score factors",)
        rows = [row + (format_factors(r.score_factors),) for row, r in zip(rows, recs)]
    widths = [max(len(h), *(len(row[c]) for row in rows)) if rows else len(h) for c, h in enumerate(header)]
    numeric = {0, 3, 4, 5}

    def line(cells):
        parts = [cell.rjust(w) if c in numeric else cell.ljust(w) for c, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    out = [line(header), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    return "\n".join(out)


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read --token-file {path!r}: {e}") from e
    if not token:
        raise ValueError(f"--token-file {path!r} is empty")
    return token


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "recommend":  # tolerate `recommend_cli recommend --user ...`
        argv = argv[1:]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help / errors; report its status instead
        return int(e.code or 0)

    filters: dict[str, list[str]] = {}
    for key, value in args.filter:
        filters.setdefault(key, []).extend(v for v in value.replace(",", "|").split("|") if v)
    context = {}
    if args.hour_of_day is not None:
        context["hour_of_day"] = args.hour_of_day
    if args.day_of_week is not None:
        context["day_of_week"] = args.day_of_week
    user_features = dict(args.user_feature)

    from serving.client import AUTO, RecommenderClient, RecommenderError

    try:
        token = _read_token(args.token_file) if args.token_file else None
        recommender = {"auto": AUTO, "none": None}.get(args.recommender_model, args.recommender_model)
        with RecommenderClient(args.target, timeout_s=args.timeout, retrieval_model=args.retrieval_model,
                               ranking_model=None if args.no_rank else args.ranking_model,
                               recommender_model=recommender,
                               root_cert_file=args.root_cert_file, token=token) as client:
            # Numeric user features go as numbers (the client casts to the signature's dtype).
            recs = client.recommend(
                args.user, k=args.k, history=args.history,
                context=context, user_features=user_features or None,
                num_candidates=args.num_candidates,
                exclude=[i for group in args.exclude for i in group],
                exclude_history=not args.include_history,
                item_filter=filters or None, diversity=args.diversity, rank_by=args.rank_by,
                explain=not args.no_explain, explain_score=args.explain_score,
            )
    except ValueError as e:
        print(f"recsys recommend: {e}", file=sys.stderr)
        return 2
    except RecommenderError as e:
        print(f"recsys recommend: {e}", file=sys.stderr)
        return 1

    if args.json:
        print(json.dumps([r.to_dict() for r in recs], indent=2))
        return 0
    source = recs[0].source if recs else "-"
    ranked = "retrieval order" if args.no_rank else f"ranked by {args.rank_by}"
    print(f"{len(recs)} recommendation(s) for user {args.user} ({source}, {ranked}) from {args.target}")
    if recs:
        print(format_table(recs))
    else:
        print("(nothing left after exclusions and filters; try more --num-candidates or fewer filters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
