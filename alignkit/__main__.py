from alignkit.cli import main

main()
