from spendgate.cli_start import main

main()
