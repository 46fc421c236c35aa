"""llama.cpp side of `cargo xtask bench llm-cpu`: greedy decode of the same
prompt ids on the same GGUF file through llama-cpp-python, timed as the engine
times itself (TTFT: start to the first token; decode: tokens after the first
over the time after it); prints {"tok_s", "ttft_ms", "generated", "version",
"system_info"}.
Usage: python llama_cpp_decode.py MODEL.gguf PROMPT_IDS_JSON N THREADS
"""
import json
import sys
import time

import llama_cpp
from llama_cpp import Llama

path, ids, n, threads = sys.argv[1], json.load(open(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)


def run(count):
    """Greedy tokens after the prompt; never stops early (the engine side
    generates `count` tokens too)."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    tok = llm.sample(temp=0.0)
    first = time.perf_counter()
    for _ in range(count - 1):
        llm.eval([tok])
        tok = llm.sample(temp=0.0)
    end = time.perf_counter()
    return (count - 1) / (end - first), (first - start) * 1e3


run(8)  # warm-up
tok_s, ttft_ms = run(n)
print(json.dumps({
    "tok_s": tok_s,
    "ttft_ms": ttft_ms,
    "generated": n,
    "version": llama_cpp.__version__,
    "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip(),
}))
