"""The search loop: run options (options), the one ask -> run -> tell loop (loop), what one trial does
(trial), where trials run (this process, or Ray workers: ray_executor), progress lines, and
`run_search`, the entry point (run)."""
