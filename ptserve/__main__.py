from ptserve.cli import main

main()
