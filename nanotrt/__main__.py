from nanotrt.cli import main

main()
