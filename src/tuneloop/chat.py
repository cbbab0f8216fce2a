"""Chat with a tuned model: `tuneloop chat runs/airline-sentiment [--prompt "..."]`.

A run folder's model/ is the merged model, and the run's data.instruction (the system message it was
trained with) is used unless --system says otherwise.
"""

from __future__ import annotations

import sys


def load_for_chat(target: str, system: str | None):
    from tuneloop.models.sources import load_causal_lm
    from tuneloop.run import open_run

    path, cfg = open_run(target)
    if cfg is not None and system is None:
        system = (cfg.get("data") or {}).get("instruction") or None
    model, tok, _ = load_causal_lm(path)
    return model, tok, system


def chat(target: str, prompt: str | None, system: str | None, max_new_tokens: int) -> int:
    from tuneloop.evaluate.generate import generate

    model, tok, system = load_for_chat(target, system)
    history = [{"role": "system", "content": system}] if system else []
    if prompt is not None:
        print(generate(model, tok, [history + [{"role": "user", "content": prompt}]], max_new_tokens, 1)[0])
        return 0
    print("tuneloop chat: type a message; /reset clears the history, /quit or Ctrl-D exits.", file=sys.stderr)
    turns = list(history)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print(file=sys.stderr)
            return 0
        if line in ("/quit", "/exit"):
            return 0
        if line == "/reset":
            turns = list(history)
            continue
        if not line:
            continue
        turns.append({"role": "user", "content": line})
        answer = generate(model, tok, [turns], max_new_tokens, 1)[0]
        turns.append({"role": "assistant", "content": answer})
        print(f"model> {answer}", flush=True)
