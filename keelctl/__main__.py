from keelctl.cli import main

main()
