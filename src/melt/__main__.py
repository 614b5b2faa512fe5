from melt.cli import main

main()
