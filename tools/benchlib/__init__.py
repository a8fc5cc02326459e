"""What tools/bench_server.py is made of, one concept a module:

    server_chain.py   zswarm-server processes started one after another from the CLI, read from their logs
    chain_client.py   Chain: one inference session on each server of a chain, the protocol bare; Hop; info
    swarm_session.py  GreedySession: one client (connection, sessions, client parts), greedy, timed per token
    client_pool.py    ClientPool: N concurrent sessions over K client processes, decoding at once
    swarm_runs.py     churn, concurrency and time to first token through a running chain
    hf_local.py       Hugging Face on the same device: eager and static+compile generate, TTFT, quant rows
    floor.py          the memory-bandwidth floor of a decode step
    stats.py          medians and p10 of timings
    cpu_section.py    overhead of one step through a server process, decode tokens/s of concurrent sessions
    random_llama.py   a Llama checkpoint of a named shape with random fp16 weights
    gpu_section.py    the GPU section: the parts above in one run, in an order that keeps them fair
    gpu_tables.py     the GPU section's tables
    delay_proxy.py    the distance emulator: TCP/UDP relays that delay by a latency matrix between regions (bench_wan)
    wan_swarm.py      WanSwarm: a LocalSwarm whose servers sit in emulated regions; scenarios as data (bench_wan)
"""
