from diladiff_cli.cli import main

main()
