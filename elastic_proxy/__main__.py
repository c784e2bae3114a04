from elastic_proxy.cli import main

main()
