"""What tools/bench_server.py is made of, one concept a module:

    server_chain.py  zswarm-server processes started one after another from the CLI, read from their logs
    chain_client.py  Chain: one inference session on each server of a chain, the protocol bare; info
    stats.py         median and p10 of timings, in µs
    cpu_section.py   overhead of one step through a server process, decode tokens/s of concurrent sessions
    random_llama.py  a Llama checkpoint of a named shape with random fp16 weights
    gpu_section.py   greedy decode through 2 servers on one GPU against Hugging Face generate
"""
