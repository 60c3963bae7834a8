"""Load an exported bundle in vLLM (merged folder, and base + LoRA-only adapter); print greedy ids.

Run as a subprocess by `test_export_vllm.py` (vLLM scripts need a __main__ guard).
Usage: python vllm_export_check.py EXPORT_DIR PROMPT_IDS_JSON
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    export, prompt = sys.argv[1], json.loads(sys.argv[2])
    params = SamplingParams(max_tokens=4, temperature=0.0)
    merged = LLM(model=export, dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
    out = {"merged": list(merged.generate([TokensPrompt(prompt_token_ids=prompt)], params)[0].outputs[0].token_ids)}
    del merged
    multi = LLM(model=f"{export}/multi/base", dtype="float32", max_model_len=256, enforce_eager=True, seed=0,
                enable_lora=True, max_lora_rank=16)
    lora = LoRARequest("chatrec", 1, f"{export}/multi/adapters/chatrec")
    res = multi.generate([TokensPrompt(prompt_token_ids=prompt)], params, lora_request=lora)
    out["multi"] = list(res[0].outputs[0].token_ids)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
