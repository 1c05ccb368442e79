"""`hivemoe export RUN_DIR --model NAME --out DIR`: a run's trained model as a Hugging Face checkpoint.

    hivemoe export runs/<id> --model expert:english --out hf/english
    python -c "from transformers import pipeline; print(pipeline('text-generation', model='hf/english')('To be'))"

NAME is dense, btx, seed, expert:<subnet> or baseline:<kind> (see moe.roles.run_models). Needs the `hf` extra
(`pip install -e ".[hf]"`). Exit status 0 on success, 1 with one `error:` line on stderr when the model is missing,
corrupt or cannot be written, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys

from moe.roles.run_models import MODEL_NAMES, RunModelError, load_run_model


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    p = argparse.ArgumentParser(prog="hivemoe export", description="Export a run's model for Hugging Face.")
    p.add_argument("run_dir", help="a finished run directory (runs/<id>)")
    p.add_argument("--model", required=True, help=f"which model: {', '.join(MODEL_NAMES)}")
    p.add_argument("--out", required=True, help="directory to write the transformers checkpoint into")
    args = p.parse_args(argv)

    try:
        from moe.export.hf_model import export_model
    except ImportError as e:
        print(f"error: hivemoe export needs transformers ({e}); pip install -e '.[hf]'", file=sys.stderr)
        return 1
    try:
        model = load_run_model(args.run_dir, args.model)
    except RunModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        out = export_model(model, args.out)
    except (OSError, RuntimeError) as e:  # RuntimeError: a transformers whose layout differs from the pinned one
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"error: cannot export {args.model} to {args.out}: {first_line}", file=sys.stderr)
        return 1
    arch = "MixtralForCausalLM" if model.config.moe_experts else "LlamaForCausalLM"
    print(f"exported {args.model} ({model.num_params():,} parameters) as {arch} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
