from elm_data.cli import main

main()
