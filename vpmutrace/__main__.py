from vpmutrace.cli import main

main()
