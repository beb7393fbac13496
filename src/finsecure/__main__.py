from finsecure.cli import main

main()
