from qlit.cli import main

main()
