from chatrec.cli import main

main()
