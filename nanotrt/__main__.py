try:
    from nanotrt.cli import main
except KeyboardInterrupt:  # Ctrl-C while the CLI is still importing: no traceback
    raise SystemExit(130) from None

main()
